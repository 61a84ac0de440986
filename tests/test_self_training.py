"""nnUNetTrainerSelfTraining: rounds, pseudo-label folders, validation cases, resume, reset, stock CLIs.

With conftest's budget (2 epochs x 3 iterations) round 0 is epoch 0 and round 1 (pseudo labels) is epoch 1.
Each test uses its own fold of Dataset801 (4 labeled, leave-one-out) so their output folders stay apart.
"""
import glob
import json
import os
import pickle

import blosc2
import numpy as np
import pytest
import torch

from conftest import predict_test_set_2d, run_cli

ST = "nnUNetTrainerSelfTraining"
DATASET = "Dataset801_T2D"


def make_trainer(fold):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args("801", "2d", fold, ST, "nnUNetPlans", device=torch.device("cpu"))


def _fold_folder(nnunet_env, fold):
    return os.path.join(nnunet_env["nnUNet_results"], DATASET, f"{ST}__nnUNetPlans__2d", f"fold_{fold}")


def _split(nnunet_env, fold):
    with open(os.path.join(nnunet_env["nnUNet_preprocessed"], DATASET, "splits_final.json")) as f:
        return json.load(f)[fold]


def _pool_cases(nnunet_env):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    return sorted(nnUNetDatasetBlosc2.get_identifiers(
        os.path.join(nnunet_env["nnUNet_preprocessed"], DATASET, "nnUNetPlans_2d_unlabeled")))


def _identifiers(folder):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    return sorted(nnUNetDatasetBlosc2.get_identifiers(folder))


def _pool_case_finder(nnunet_env):
    """case id of a preprocessed pool image, for stubbed pseudo-label predictors that answer per case"""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    pool = nnUNetDatasetBlosc2(os.path.join(nnunet_env["nnUNet_preprocessed"], DATASET, "nnUNetPlans_2d_unlabeled"))
    images = {case: torch.from_numpy(pool.load_case(case)[0][:]) for case in pool.identifiers}
    return lambda data: next(c for c, image in images.items() if torch.equal(image, data))


def _latest_log(folder):
    return open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_cli_train_both_rounds_validate_predict(dataset_2d, nnunet_env, tmp_path):
    run_cli("nnUNetv2_train", "801", "2d", "0", "-tr", ST, "-device", "cpu")
    folder = _fold_folder(nnunet_env, 0)
    split, pool = _split(nnunet_env, 0), _pool_cases(nnunet_env)
    assert len(split["train"]) == 3 and len(split["val"]) == 1 and len(pool) == 6

    # round 1's training set: the fold's 3 labeled training cases + the 6 pool cases, never the validation case
    round_folder = os.path.join(folder, "self_training", "round_1")
    assert _identifiers(round_folder) == sorted(split["train"] + pool)
    assert not set(split["val"]) & set(os.path.splitext(f)[0] for f in os.listdir(round_folder))
    marker = json.load(open(os.path.join(round_folder, "complete.json")))
    assert marker["round"] == 1 and marker["labeled_cases"] == 3 and marker["pseudo_labeled_cases"] == 6
    assert os.path.isfile(marker["source_checkpoint"])
    for case in pool:
        seg = blosc2.open(os.path.join(round_folder, case + "_seg.b2nd"), mode="r")[:]
        data = blosc2.open(os.path.join(round_folder, case + ".b2nd"), mode="r")
        assert seg.shape == (1, *data.shape[1:])
        assert set(np.unique(seg).tolist()) <= {-1, 0, 1, 2}
        properties = pickle.load(open(os.path.join(round_folder, case + ".pkl"), "rb"))
        assert set(properties["class_locations"]) == {1, 2}
        for label, locations in properties["class_locations"].items():
            locations = np.asarray(locations).reshape(-1, 4)
            assert all(seg[tuple(loc)] == label for loc in locations)

    log = _latest_log(folder)
    assert "Self-training round 0/1, epochs 0-0: training on 3 labeled + 0 pseudo-labeled cases, " \
           "validating on 1 labeled case(s)" in log
    assert "Round 1: pseudo labels of 6 pool cases written" in log
    assert "Self-training round 1/1, epochs 1-1: training on 3 labeled + 6 pseudo-labeled cases, " \
           "validating on 1 labeled case(s)" in log
    assert log.index("Epoch 0") < log.index("pseudo labels of 6") < log.index("Epoch 1")

    # the fold's final validation predicted its real labeled case only
    assert sorted(os.listdir(os.path.join(folder, "validation"))) == sorted([split["val"][0] + ".png",
                                                                             "summary.json"])
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), weights_only=False)
    source = torch.load(marker["source_checkpoint"], weights_only=False)
    assert final["phase"] == 1 and final["current_epoch"] == 2
    assert source["phase"] == 0 and source["current_epoch"] == 1
    assert any(not torch.equal(final["network_weights"][k], v) for k, v in source["network_weights"].items())

    out = tmp_path / "pred"
    predict_test_set_2d(dataset_2d, out, ST)


def test_round_1_validates_on_real_labeled_cases_only(dataset_2d, nnunet_env):
    fold = 1
    split, pool = _split(nnunet_env, fold), _pool_cases(nnunet_env)
    trainer = make_trainer(fold)
    trainer.on_train_start()
    trainer.current_epoch = 1  # first epoch of round 1: pseudo labels, then the round-1 data loaders
    trainer.on_epoch_start()
    assert trainer.current_round == 1
    assert sorted(trainer.dataloader_train.data_loader._data.identifiers) == sorted(split["train"] + pool)
    assert trainer.dataloader_val.data_loader._data.identifiers == split["val"]
    assert trainer.do_split()[1] == split["val"]  # the keys perform_actual_validation predicts

    # labeled_share 0.5 (nnUNetTrainerSelfTrainingBalanced): 3 labeled vs 6 pool cases -> each labeled case listed
    # twice, so half of the uniform draws of nnU-Net's loader are labeled; validation unchanged
    trainer.labeled_share = 0.5
    balanced_tr, balanced_val = trainer.get_tr_and_val_datasets()
    assert sorted(balanced_tr.identifiers) == sorted(split["train"] * 2 + pool)
    assert balanced_val.identifiers == split["val"]
    assert "(each labeled case drawn 2x as often)" in open(trainer.log_file).read()
    trainer.labeled_share = 1.0
    with pytest.raises(ValueError, match="labeled_share"):
        trainer.get_tr_and_val_datasets()


def test_resume_reuses_pseudo_labels_of_the_same_training(dataset_2d, nnunet_env):
    fold = 3
    folder = _fold_folder(nnunet_env, fold)
    trainer = make_trainer(fold)

    class Interrupted(Exception):
        pass

    train_step = trainer.train_step

    def interrupted_in_round_1(batch):
        if trainer.current_epoch == 1:
            raise Interrupted
        return train_step(batch)

    trainer.train_step = interrupted_in_round_1
    with pytest.raises(Interrupted):
        trainer.run_training()
    latest = torch.load(os.path.join(folder, "checkpoint_latest.pth"), weights_only=False)
    assert latest["phase"] == 1 and latest["current_epoch"] == 1
    round_folder = os.path.join(folder, "self_training", "round_1")
    files = [os.path.join(round_folder, name) for name in
             [case + "_seg.b2nd" for case in _pool_cases(nnunet_env)] + ["complete.json"]]  # what the trainer writes
    stamps = {f: (os.stat(f).st_ino, os.stat(f).st_mtime_ns) for f in files}

    from nnunetv2.run.run_training import maybe_load_checkpoint
    continued = make_trainer(fold)  # what nnUNetv2_train --c does, in process (the CLI: the test above)
    maybe_load_checkpoint(continued, True, False, None)
    continued.run_training()
    assert {f: (os.stat(f).st_ino, os.stat(f).st_mtime_ns) for f in files} == stamps
    log = open(continued.log_file).read()
    assert "Epoch 1" in log and "Epoch 0" not in log
    assert "Self-training round 1/1, epochs 1-1: training on 3 labeled + 6 pseudo-labeled cases" in log
    assert "pseudo labels of" not in log and "round 0/1" not in log
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), weights_only=False)
    assert final["phase"] == 1 and final["current_epoch"] == 2
    assert final["self_training_id"] == latest["self_training_id"]
    assert not os.path.isfile(os.path.join(folder, "checkpoint_latest.pth"))

    # stopped after the pseudo labels but before round 1's checkpoint: resuming from round 0 reuses them
    resumed = make_trainer(fold)
    resumed.load_checkpoint(os.path.join(folder, "checkpoint_round_0.pth"))
    assert resumed.current_round == 0 and resumed.current_epoch == 1
    resumed.on_train_start()
    resumed.on_epoch_start()
    assert resumed.current_round == 1
    assert "pseudo labels in " + round_folder + " are complete, reused" in open(resumed.log_file).read()
    assert {f: (os.stat(f).st_ino, os.stat(f).st_mtime_ns) for f in files} == stamps

    # a new training (no --c) in the same folder makes its own pseudo labels
    new = make_trainer(fold)
    new.on_train_start()
    new.current_epoch = 1
    new.on_epoch_start()
    assert json.load(open(os.path.join(round_folder, "complete.json")))["training_id"] == new.training_id
    assert all(os.stat(f).st_ino != stamps[f][0] for f in files)


def test_round_start_resets_weights_optimizer_and_lr(dataset_2d, nnunet_env):
    trainer = make_trainer(2)
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    for _ in range(2):
        trainer.train_step(next(trainer.dataloader_train))
    trained = _state(trainer.network)
    assert trainer.optimizer.state  # SGD momentum buffers

    trainer.current_epoch = 1
    torch.manual_seed(123)
    trainer.on_epoch_start()  # round 1: pseudo labels from the trained network, then a fresh start
    trainer.on_train_epoch_start()
    reset = _state(trainer.network)
    torch.manual_seed(123)
    fresh = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                               trainer.num_input_channels,
                                               trainer.label_manager.num_segmentation_heads, True).state_dict()
    weights = [k for k in trained if k.endswith(".weight") and trained[k].ndim > 1]  # convolutions
    assert weights and all(not torch.equal(reset[k], trained[k]) for k in weights)
    for k in fresh:
        torch.testing.assert_close(reset[k], fresh[k], msg=k)
    assert not trainer.optimizer.state
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.initial_lr  # absolute PolyLR: 0.01 * 0.5^0.9

    # the schedule of a longer budget: PolyLR over each round's own epochs
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = type(trainer.lr_scheduler)(optimizer, 0.01, [0, 5, 7, 10])
    lrs = []
    for epoch in range(10):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == lrs[5] == lrs[7] == 0.01
    assert lrs[4] == pytest.approx(0.01 * (1 - 4 / 5) ** 0.9) and lrs[6] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert lrs[9] == pytest.approx(0.01 * (1 - 2 / 3) ** 0.9)


def test_round_2_drops_cases_whose_pseudo_label_changed(dataset_2d, nnunet_env, monkeypatch):
    """Two rounds with min_round_agreement = 1: a pool case whose round-2 pseudo label differs from round 1's is
    left out of round 2's training set (kept in dropped/), an unchanged one is kept; counts in log and marker."""
    trainer = make_trainer("all")
    trainer.rounds, trainer.first_stage_fraction, trainer.num_epochs = 2, 1 / 3, 3  # rounds start at 0, 1, 2
    trainer.min_round_agreement = 1.0
    pool = _pool_cases(nnunet_env)
    changed = set(pool[::2])

    def fake_pseudo_segmentation(predictor, data):  # round 1: top half; round 2: bottom half for `changed`
        seg = np.zeros((1, *data.shape[1:]), np.int16)
        half = data.shape[-2] // 2
        moved = trainer.current_round == 1 and case_of(data) in changed
        (seg[..., half:, :] if moved else seg[..., :half, :]).fill(1)
        return seg

    case_of = _pool_case_finder(nnunet_env)
    monkeypatch.setattr(trainer, "pseudo_segmentation", fake_pseudo_segmentation)
    trainer.on_train_start()
    for epoch in (1, 2):
        trainer.current_epoch = epoch
        trainer.on_epoch_start()
    folder = _fold_folder(nnunet_env, "all")
    round_1, round_2 = (os.path.join(folder, "self_training", f"round_{k}") for k in (1, 2))
    labeled = _split(nnunet_env, 0)["train"] + _split(nnunet_env, 0)["val"]
    assert _identifiers(round_1) == sorted(labeled + pool)  # round 1 is never filtered
    assert _identifiers(round_2) == sorted(labeled + [c for c in pool if c not in changed])
    assert sorted(trainer.dataloader_train.data_loader._data.identifiers) == _identifiers(round_2)
    dropped = sorted(f[:-len("_seg.b2nd")] for f in os.listdir(os.path.join(round_2, "dropped"))
                     if f.endswith("_seg.b2nd"))
    assert dropped == sorted(changed)
    marker = json.load(open(os.path.join(round_2, "complete.json")))
    assert marker["dropped_cases"] == sorted(changed) and marker["pseudo_labeled_cases"] == len(pool) - len(changed)
    assert marker["agreement_with_previous_round"] == {c: 0.0 if c in changed else 1.0 for c in pool}
    assert (f"kept {len(pool) - len(changed)} of {len(pool)} (agreement with round 1 >= 1.0), "
            f"dropped {len(changed)}") in open(trainer.log_file).read()


def test_reliable_round_1_keeps_the_pool_cases_stable_over_round_0(dataset_2d, nnunet_env, monkeypatch):
    """nnUNetTrainerSelfTrainingReliable (ST++ selection): round 0 keeps a snapshot; at round 1 the snapshot and the
    final round-0 network both predict the pool, and only the most stable half joins the training set. Stubbed
    predictions: the snapshot agrees with the final network on `stable` cases (score 1) and not on the others (0)."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_ssl.architectures.common import unwrap
    trainer = get_trainer_from_args("801", "2d", 0, "nnUNetTrainerSelfTrainingReliable", "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.first_stage_fraction, trainer.num_epochs = 2 / 3, 3  # round 0: epochs 0-1, round 1: epoch 2
    assert trainer.snapshot_epochs == [0]
    pool = _pool_cases(nnunet_env)
    stable = set(pool[1::2])
    case_of = _pool_case_finder(nnunet_env)

    def fake_pseudo_segmentation(predictor, data):  # final network: top half; snapshot: bottom half if unstable
        snapshot = torch.load(trainer.snapshot_file(0), weights_only=True)
        name, weights = next(iter(unwrap(trainer.network).state_dict().items()))
        from_snapshot = torch.equal(weights.cpu(), snapshot[name])
        seg = np.zeros((1, *data.shape[1:]), np.int16)
        half = data.shape[-2] // 2
        (seg[..., half:, :] if from_snapshot and case_of(data) not in stable else seg[..., :half, :]).fill(1)
        return seg

    monkeypatch.setattr(trainer, "pseudo_segmentation", fake_pseudo_segmentation)
    trainer.run_training()
    split = _split(nnunet_env, 0)
    round_1 = os.path.join(trainer.output_folder, "self_training", "round_1")
    assert _identifiers(round_1) == sorted(split["train"] + sorted(stable))
    marker = json.load(open(os.path.join(round_1, "complete.json")))
    assert marker["stability_over_round_0"] == {c: 1.0 if c in stable else 0.0 for c in pool}
    assert marker["dropped_cases"] == sorted(set(pool) - stable) and marker["reliable_fraction"] == 0.5
    assert f"kept the {len(stable)} of {len(pool)} most stable over round 0" in open(trainer.log_file).read()
    # 3 labeled vs 3 pseudo-labeled cases: labeled_share 0.5 lists each labeled case once
    assert sorted(trainer.dataloader_train.data_loader._data.identifiers) == _identifiers(round_1)


def test_a_longer_round_0_splits_the_budget_as_its_share_says():
    """Issue 21's round-0 shares on the README's PH2 budget (15 epochs): 8 + 7, 11 + 4, 14 + 1 epochs."""
    from nnunet_ssl.core.phases import phase_starts
    from nnunet_ssl.trainers.nnUNetTrainerSelfTraining import (nnUNetTrainerSelfTraining,
                                                               nnUNetTrainerSelfTraining_Round0Share75,
                                                               nnUNetTrainerSelfTraining_Round0Share90)
    for cls, round_1_start in ((nnUNetTrainerSelfTraining, 8), (nnUNetTrainerSelfTraining_Round0Share75, 11),
                               (nnUNetTrainerSelfTraining_Round0Share90, 14)):
        phases = object.__new__(cls).phases()  # phases() reads only class settings
        assert phase_starts([p.share for p in phases], 15) == [0, round_1_start]
        assert phases[1].fresh_weights  # round 1 still starts from scratch
