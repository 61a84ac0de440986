"""The rule: no project command writes into a model folder, a results folder or a dataset that it did not create
for that run, unless the user asks for it (--overwrite, set-inference-weights --use). Timing and inspection
commands work on copies or temporary folders. Every such command runs here on a trained model and its dataset;
afterwards every file of the raw dataset, the preprocessed dataset and the results folder is byte-identical."""
import hashlib
import os
import shutil

import pytest
import torch

from nnunet_ssl.commands.cli import main

MT = "nnUNetTrainerMeanTeacher"


def _digest(*folders):
    digest = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for f in files:
                path = os.path.join(root, f)
                with open(path, "rb") as fh:
                    digest[path] = hashlib.md5(fh.read()).hexdigest()
    return digest


def _run(argv, expect_exit=None):
    if expect_exit is None:
        main(argv)
        return
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == expect_exit


def test_inspection_and_timing_commands_leave_models_and_datasets_alone(dataset_2d, nnunet_env, tmp_path,
                                                                         monkeypatch):
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.run.run_training import get_trainer_from_args

    results = tmp_path / "results"
    monkeypatch.setenv("nnUNet_results", str(results))  # a trained model of our own, in a results folder
    trainer = get_trainer_from_args("801", "2d", "all", MT, "nnUNetPlans", device=torch.device("cpu"))
    trainer.initialize()
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    for name, content in (("plans.json", trainer.plans_manager.plans), ("dataset.json", trainer.dataset_json)):
        save_json(content, os.path.join(trainer.output_folder_base, name))  # as on_train_start writes them
    test_predictions = os.path.join(trainer.output_folder_base, "test_predictions_fold_all")
    shutil.copytree(os.path.join(dataset_2d, "labelsTs"), test_predictions)  # a perfect "prediction"
    preprocessed = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset801_T2D")
    before = _digest(dataset_2d, preprocessed, results)

    _run(["bench-step", "-d", "801", "-c", "2d", "-f", "all", "-tr", MT, "--iters", "1", "--blocks", "1",
          "-device", "cpu"])
    _run(["leaderboard", "-d", "801", "-c", "2d", "-tr", MT, "-o", str(tmp_path / "board"), "-np", "1"])
    _run(["evaluate", os.path.join(dataset_2d, "labelsTs"), test_predictions, "-djfile",
          os.path.join(dataset_2d, "dataset.json"), "-o", str(tmp_path / "summary.json"), "-np", "1"])
    _run(["set-inference-weights", "-d", "801", "-c", "2d", "-tr", MT])  # lists; --use would switch
    _run(["preprocess-unlabeled", "-d", "801", "-c", "2d", "-np", "1"])  # up to date: nothing to do
    _run(["make-splits", "-d", "801"])  # the existing split is checked, not replaced
    _run(["predict-uncertainty", "-i", os.path.join(dataset_2d, "imagesTs"), "-o", str(tmp_path / "uncertainty"),
          "-d", "801", "-c", "2d", "-tr", MT, "-device", "cpu", "--disable_tta", "--overview-cases", "0"])
    _run(["train", "801", "2d", "all", "-tr", MT, "--epochs", "1", "--iters", "1"], expect_exit=2)

    after = _digest(dataset_2d, preprocessed, results)
    assert after == before, {"changed or new": sorted(set(after.items()) ^ set(before.items()))[:5]}
