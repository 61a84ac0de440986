"""Faults during training: kill -9 after a checkpoint then --c, a non-finite loss, and the checkpoint files that a
killed write leaves behind."""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import run_cli

MT = "nnUNetTrainerMeanTeacher"


def _tensors_equal(a, b, where=""):
    """Nested dicts/lists of tensors and numbers: equal everywhere."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _tensors_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a.cpu(), b.cpu()), where
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN for logged values


def _checkpoint_epoch(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["current_epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def test_kill_9_after_a_checkpoint_then_continue_restores_everything(dataset_2d, nnunet_env):
    """nnUNetv2_train of an SSL trainer with checkpoint_latest every epoch (nnUNet_ssl_save_every), killed with
    SIGKILL once two epochs are checkpointed; the checkpoint left is whole, --c restores student, teacher,
    optimizer, grad scaler, epoch and log from it, and the continued run finishes the budget with the history of
    the killed one."""
    folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset801_T2D", f"{MT}__nnUNetPlans__2d", "fold_2")
    latest = os.path.join(folder, "checkpoint_latest.pth")
    env = {**os.environ, "nnUNet_ssl_epochs": "4", "nnUNet_ssl_save_every": "1"}
    proc = subprocess.Popen(["nnUNetv2_train", "801", "2d", "2", "-tr", MT, "-device", "cpu"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while _checkpoint_epoch(latest) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the training ended before it was killed"
    assert not os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
    killed = torch.load(latest, map_location="cpu", weights_only=False)
    epoch = killed["current_epoch"]
    assert 2 <= epoch < 4

    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from torch.amp import GradScaler

    trainer = get_trainer_from_args("801", "2d", 2, MT, "nnUNetPlans", device=torch.device("cpu"))
    maybe_load_checkpoint(trainer, True, False)
    _tensors_equal(trainer.network.state_dict(), killed["ssl_weights"]["student"], "student")
    _tensors_equal(trainer.teacher.state_dict(), killed["ssl_weights"]["teacher"], "teacher")
    _tensors_equal(trainer.optimizer.state_dict(), killed["optimizer_state"], "optimizer")
    _tensors_equal(trainer.logger.get_checkpoint(), killed["logging"], "logging")
    assert trainer.current_epoch == epoch
    assert killed["grad_scaler_state"] is None and trainer.grad_scaler is None  # CPU: nnU-Net has no grad scaler
    # the CUDA path's grad scaler state goes through the same save/load
    trainer.grad_scaler = GradScaler("cpu", init_scale=1234.0)
    trainer.save_checkpoint(os.path.join(str(folder), "scaler_check.pth"))
    trainer.grad_scaler = GradScaler("cpu")
    trainer.load_checkpoint(os.path.join(str(folder), "scaler_check.pth"))
    assert trainer.grad_scaler.get_scale() == 1234.0
    os.remove(os.path.join(str(folder), "scaler_check.pth"))

    r = run_cli("nnUNetv2_train", "801", "2d", "2", "-tr", MT, "-device", "cpu", "--c", env={"nnUNet_ssl_epochs": "4"})
    assert f"Epoch {epoch}" in r.stdout and "Epoch 0" not in r.stdout
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 4
    for key in ("train_losses", "consistency_loss"):
        assert len(final["logging"][key]) == 4
        np.testing.assert_array_equal(final["logging"][key][:epoch], killed["logging"][key][:epoch])
    assert not glob.glob(os.path.join(folder, "*.tmp"))


def test_stale_checkpoint_temp_files_of_killed_writers_are_removed(tmp_path):
    from nnunet_ssl.core.checkpoints import write_checkpoint
    from nnunet_ssl.utilities.atomic import host_name

    target = str(tmp_path / "checkpoint_latest.pth")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"{target}.pid{dead.pid}-{host_name()}.tmp"
    live = f"{target}.pid{os.getppid()}-{host_name()}.tmp"  # a live process (pytest's parent) may be writing it
    other_host = f"{target}.pid{dead.pid}-another-host.tmp"  # a process id means nothing on another host
    for f in (stale, live, other_host):
        open(f, "w").write("half a checkpoint")
    write_checkpoint({"x": torch.ones(1)}, target)
    assert torch.load(target)["x"].item() == 1
    assert not os.path.exists(stale) and os.path.exists(live) and os.path.exists(other_host)


def test_non_finite_loss_stops_training_before_a_checkpoint(dataset_2d, nnunet_env, tmp_path, monkeypatch):
    """A NaN unlabeled batch (a pool case the pool's checks would have refused) makes Mean Teacher's loss NaN;
    training stops at the end of the epoch, names the term, and writes no checkpoint of the NaN weights."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ssl.core.trainer import NonFiniteLossError

    monkeypatch.setenv("nnUNet_results", str(tmp_path))  # nnU-Net reads its paths when used, not at import
    trainer = get_trainer_from_args("801", "2d", 0, MT, "nnUNetPlans", device=torch.device("cpu"))
    trainer.save_every = 1
    real_batch = trainer.unlabeled_batch
    trainer.unlabeled_batch = lambda: torch.full_like(real_batch(), float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite in epoch 0 \(first at iteration 0 of the "
                                                 r"epoch, in loss, consistency_loss\)"):
        trainer.run_training()
    assert not glob.glob(os.path.join(trainer.output_folder, "checkpoint_*.pth"))


def test_non_finite_loss_names_the_term_that_went_wrong_not_one_the_phase_does_not_compute():
    """MIRA-U logs reconstruction_loss as NaN in every step of its ssl phase; the error must name the term that
    became NaN (and its first iteration), not that one."""
    from types import SimpleNamespace

    from nnunet_ssl.core.trainer import NonFiniteLossError, nnUNetTrainerSSL

    nan = float("nan")
    trainer = SimpleNamespace(
        logger=SimpleNamespace(local_logger=SimpleNamespace(my_fantastic_logging={"train_losses": [nan]})),
        ssl_log_keys=("pseudo_loss", "entropy_loss", "reconstruction_loss"), current_epoch=6, output_folder="out")
    outputs = {"loss": [0.5, 0.4, nan], "pseudo_loss": [0.2, 0.1, 0.1], "entropy_loss": [0.1, 0.1, nan],
               "reconstruction_loss": [nan, nan, nan]}
    with pytest.raises(NonFiniteLossError, match=r"epoch 6 \(first at iteration 2 of the epoch, in loss, "
                                                 r"entropy_loss\)"):
        nnUNetTrainerSSL.stop_on_non_finite_loss(trainer, outputs)


def test_checkpoint_is_written_once_with_the_teacher(dataset_2d, nnunet_env, tmp_path, monkeypatch):
    """One torch.save per checkpoint (nnU-Net's save and then a re-save with the teacher left, after a kill
    between the two, a file that --c refused); that one file already holds the teacher."""
    import nnunet_ssl.core.checkpoints as checkpoints
    from test_mean_teacher import make_trainer

    trainer = make_trainer(MT)
    trainer.initialize()
    saves = []
    real_save = torch.save
    monkeypatch.setattr(checkpoints.torch, "save", lambda obj, f: (saves.append(f), real_save(obj, f)))
    trainer.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    assert len(saves) == 1
    written = torch.load(tmp_path / "checkpoint_latest.pth", weights_only=False)
    _tensors_equal(written["ssl_weights"]["teacher"], trainer.teacher.state_dict(), "teacher")


def test_set_inference_weights_defaults_to_the_folds_present(nnunet_env, monkeypatch, tmp_path):
    """The project writes 4 folds for 4 labeled cases; the default was folds 0-4 and ended in a traceback."""
    from nnunet_ssl.core.checkpoints import CheckpointError, model_checkpoints

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    model = tmp_path / "Dataset801_T2D" / f"{MT}__nnUNetPlans__2d"
    for fold in range(4):
        (model / f"fold_{fold}").mkdir(parents=True)
        (model / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    assert [os.path.basename(os.path.dirname(f)) for f in model_checkpoints("Dataset801_T2D", "2d", MT)] == \
        [f"fold_{f}" for f in range(4)]
    with pytest.raises(CheckpointError, match="fold_4"):
        model_checkpoints("Dataset801_T2D", "2d", MT, folds=["4"])


def test_self_training_sgrs_snapshots_hold_what_labels_the_pool(dataset_2d, nnunet_env):
    """With inference_weights = "student" the pool is pseudo-labelled by the student, so the stability snapshots
    hold the student too (they held the teacher)."""
    from test_mean_teacher import make_trainer

    trainer = make_trainer("nnUNetTrainerSelfTrainingSGRS")
    trainer.inference_weights = "student"
    trainer.initialize()
    with torch.no_grad():  # a student far from its teacher
        for p in trainer.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    _tensors_equal(dict(trainer.pseudo_labeller_state()), student, "snapshot")
    with trainer.pseudo_labeller():
        _tensors_equal(trainer.network.state_dict(), student, "pseudo-labeller")
