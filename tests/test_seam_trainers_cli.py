"""The two-network seam trainer (tests/seam_trainers) through the stock CLIs: nnUNetv2_train, --c,
nnUNetv2_predict with a multi-output inference choice (the ensemble of two networks). The dual-head path goes
through the same CLIs with a real method: nnUNetTrainerUAMT (tests/test_uamt.py)."""
import glob
import os

import pytest
import torch

from conftest import nnunet_ssl_cli, predict_test_set_2d, run_cli


@pytest.mark.parametrize("trainer,default_choice,resume", [("nnUNetTrainerSeamTwoNets", "ensemble", True)])
def test_train_resume_predict(trainer, default_choice, resume, dataset_2d, nnunet_env, tmp_path):
    """(--c of the dual-head trainer, in process: tests/test_contract.py)"""
    folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset801_T2D", f"{trainer}__nnUNetPlans__2d", "fold_1")
    run_cli("nnUNetv2_train", "801", "2d", "1", "-tr", trainer, "-device", "cpu",
            env={"nnUNet_ssl_epochs": "1" if resume else "2"})
    if resume:
        run_cli("nnUNetv2_train", "801", "2d", "1", "-tr", trainer, "-device", "cpu", "--c",
                env={"nnUNet_ssl_epochs": "2"})
        log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
        assert "Epoch 1" in log and "Epoch 0" not in log
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert f"Final validation with the {default_choice} weights" in log
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and checkpoint["inference_weights"] == default_choice
    assert len(checkpoint["optimizer_states"]) == (2 if trainer.endswith("TwoNets") else 1)

    predict_test_set_2d(dataset_2d, tmp_path / "pred", trainer, fold="1")
    listing = nnunet_ssl_cli("set-inference-weights", "-d", "801", "-c", "2d", "-tr", trainer).stdout
    assert f"* {default_choice}:" in listing and "fold_1" in listing
