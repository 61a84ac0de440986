"""The SSL trainers under torch DDP, two processes with gloo on CPU (tests/ddp_worker.py: what is patched and why).

Checked for Mean Teacher, SGRS, a two-network two-optimizer trainer, UAMT (two heads, two optimizer steps per
iteration) and a phase with fresh weights: after
training, every rank holds the same student (gradients all-reduced, fresh weights broadcast) and the same EMA
teacher; the ranks drew different unlabeled cases; the SSL keys are logged as the mean over both ranks' steps
(gathered like nnU-Net's 'loss'); only rank 0 wrote checkpoints; a run resumed from the checkpoint on both ranks
starts from the saved weights and stays in sync. In-trainer self-training refuses DDP with its reason."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
WORLD = 2


@pytest.fixture(scope="module")
def ranks(dataset_2d, nnunet_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "nnUNet_results": str(tmp / "results"), "nnUNet_ssl_iters": "2",
           "nnUNet_ssl_val_iters": "1", "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1"}
    logs = [open(tmp / f"rank{r}.log", "w") for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, WORKER, str(r), str(WORLD), str(tmp / "rendezvous"), str(tmp)],
                              stdout=logs[r], stderr=subprocess.STDOUT, env=env) for r in range(WORLD)]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    if any(codes):
        raise AssertionError("DDP worker(s) failed:\n" + "\n".join(
            f"--- rank {r} (exit {c}):\n{open(tmp / f'rank{r}.log').read()[-5000:]}" for r, c in enumerate(codes)))

    def load(case):
        return [torch.load(tmp / f"{case}_rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return load


def assert_same_weights(a: dict, b: dict, what: str):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what} differs between the ranks in {len(differ)} tensors, e.g. {differ[:3]}"


CASES = ["mt", "mt_resumed", "sgrs", "dualnet", "uamt", "fresh_phase"]


@pytest.mark.parametrize("case", CASES)
def test_ranks_stay_in_sync(ranks, case):
    r0, r1 = ranks(case)
    assert r0["wrapped"] == "DistributedDataParallel" and r0["batch_size"] + r1["batch_size"] >= 2
    assert_same_weights(r0["student"], r1["student"], "student")
    if r0["teacher"] is not None:
        assert_same_weights(r0["teacher"], r1["teacher"], "EMA teacher")
        assert any(not torch.equal(r0["teacher"][k], r0["student"][k]) for k in r0["student"])  # it is an EMA
    # each rank drew its own unlabeled cases
    assert r0["drawn"] and r0["drawn"] != r1["drawn"]
    # the logged SSL keys are the means over both ranks' steps, the same on each rank
    epoch_steps = len(r0["steps"]) // (len(r0["logged"]["train_losses"]) - (r0["loaded"] is not None))
    for key in r0["steps"][0]:
        own = [np.mean([s[key] for s in r["steps"][-epoch_steps:]]) for r in (r0, r1)]
        assert r0["logged"][key][-1] == r1["logged"][key][-1] == pytest.approx(np.mean(own), rel=1e-6), key
        if key.endswith("loss") and key != "sup_loss":
            assert own[0] != own[1], key  # the ranks' own means differ: the gathering is what makes them equal
    # checkpoints: rank 0 writes them, rank 1 none
    assert r0["writes"] and "checkpoint_final.pth" in r0["writes"] and r1["writes"] == []


def test_ddp_gradient_is_the_mean_of_the_ranks_own_gradients(ranks):
    """Also for a backward that leaves the deep-supervision heads without gradient (the unsupervised terms)."""
    for r in ranks("mt"):
        assert r["gradient_error"] < 1e-5


def test_resumed_run_starts_from_the_checkpoint_on_every_rank(ranks):
    first, resumed = ranks("mt"), ranks("mt_resumed")
    for r in range(WORLD):
        loaded = resumed[r]["loaded"]
        assert loaded["epoch"] == 1
        assert_same_weights(loaded["student"], first[0]["student"], f"rank {r}'s resumed student vs the saved")
        assert_same_weights(loaded["teacher"], first[0]["teacher"], f"rank {r}'s resumed teacher vs the saved")
        assert resumed[r]["epoch"] == 2 and len(resumed[r]["logged"]["consistency_loss"]) == 2
    assert resumed[0]["logged"]["consistency_loss"][0] == first[0]["logged"]["consistency_loss"][0]


def test_self_training_refuses_ddp_with_its_reason(ranks):
    for r in ranks("self_training"):
        assert r["refusal"] and "does not train with -num_gpus > 1" in r["refusal"]
        assert "nnunet_ssl self-train" in r["refusal"]
