"""The seam trainers (tests/seam_trainers) through the stock CLIs: nnUNetv2_train, --c, nnUNetv2_predict with
a multi-output inference choice (the ensemble of two networks; the mean of a dual-head teacher's heads)."""
import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import nnunet_ssl_cli, run_cli


@pytest.mark.parametrize("trainer,default_choice", [("nnUNetTrainerSeamTwoNets", "ensemble"),
                                                    ("nnUNetTrainerSeamDualHead", "teacher_mean")])
def test_train_resume_predict(trainer, default_choice, contract_2d, nnunet_env, tmp_path):
    folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset811_T2D", f"{trainer}__nnUNetPlans__2d", "fold_1")
    run_cli("nnUNetv2_train", "811", "2d", "1", "-tr", trainer, "-device", "cpu", env={"nnUNet_ssl_epochs": "1"})
    run_cli("nnUNetv2_train", "811", "2d", "1", "-tr", trainer, "-device", "cpu", "--c",
            env={"nnUNet_ssl_epochs": "2"})
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert "Epoch 1" in log and "Epoch 0" not in log
    assert f"Final validation with the {default_choice} weights" in log
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and checkpoint["inference_weights"] == default_choice
    assert len(checkpoint["optimizer_states"]) == (2 if trainer.endswith("TwoNets") else 1)

    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", "-i", os.path.join(contract_2d, "imagesTs"), "-o", out, "-d", "811", "-c", "2d",
            "-f", "1", "-tr", trainer, "-device", "cpu", "-npp", "0", "-nps", "0")
    (prediction,) = glob.glob(str(out / "*.png"))
    seg = np.array(Image.open(prediction))
    assert seg.shape == (32, 32) and set(np.unique(seg)) <= {0, 1, 2}

    listing = nnunet_ssl_cli("set-inference-weights", "-d", "811", "-c", "2d", "-tr", trainer).stdout
    assert f"* {default_choice}:" in listing and "fold_1" in listing
