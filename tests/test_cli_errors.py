"""Every subcommand: a wrong dataset, a misspelled trainer or an unset nnU-Net folder is one line naming the
problem (exit code 2), not a traceback; every option has a help text; no command replaces a trained model."""
import argparse
import hashlib
import importlib
import os

import pytest

from conftest import refused
from nnunet_ssl.commands.cli import PASS_THROUGH, main

BAD_DATASET = [
    ["train", "999", "2d", "0", "--epochs", "1", "--iters", "1"],
    ["make-splits", "-d", "999"],
    ["preprocess-unlabeled", "-d", "999"],
    ["self-train", "-d", "999", "-c", "2d", "-device", "cpu"],
    ["set-inference-weights", "-d", "999", "-c", "2d", "-tr", "nnUNetTrainer"],
    ["predict-uncertainty", "-i", "in", "-o", "out", "-d", "999", "-c", "2d", "-device", "cpu"],
]
BAD_TRAINER = [
    (["train", "801", "2d", "0", "-tr", "nnUNetTrainerMeanTeachr", "--epochs", "1", "--iters", "1"],
     "did you mean nnUNetTrainerMeanTeacher"),
    (["benchmark", "-d", "801", "-c", "2d", "-tr", "nnUNetTrainer", "nnUNetTrainerSGSR", "--epochs", "1", "--iters",
      "1"], "did you mean nnUNetTrainerSGRS"),
    (["bench-step", "-d", "801", "-c", "2d", "-tr", "nnUNetTrainer", "nnUNetTrainerMeanteacher"],
     "did you mean nnUNetTrainerMeanTeacher"),
    (["predict-uncertainty", "-i", "in", "-o", "out", "-d", "801", "-c", "2d", "-tr", "nnUNetTrainerUAMt"],
     "did you mean nnUNetTrainerUAMT"),
]
UNSET_RESULTS = [
    ["train", "801", "2d", "0", "--epochs", "1", "--iters", "1"],
    ["self-train", "-d", "801", "-c", "2d", "-device", "cpu"],
    ["set-inference-weights", "-d", "801", "-c", "2d", "-tr", "nnUNetTrainer"],
    ["predict-uncertainty", "-i", "in", "-o", "out", "-d", "801", "-c", "2d", "-device", "cpu"],
]


def _clean_error(argv, capsys):
    err = refused(capsys, argv).strip().splitlines()
    assert err and err[-1].startswith("nnunet_ssl: error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


@pytest.mark.parametrize("argv", BAD_DATASET, ids=lambda a: a[0])
def test_wrong_dataset_is_a_one_line_error(argv, nnunet_env, capsys):
    assert "999" in _clean_error(argv, capsys)


@pytest.mark.parametrize("argv,hint", BAD_TRAINER, ids=lambda a: a[0] if isinstance(a, list) else "")
def test_misspelled_trainer_is_a_one_line_error_with_the_closest_name(argv, hint, dataset_2d, capsys):
    assert hint in _clean_error(argv, capsys)


@pytest.mark.parametrize("argv", UNSET_RESULTS, ids=lambda a: a[0])
def test_unset_results_folder_is_a_one_line_error(argv, dataset_2d, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_results")
    assert "nnUNet_results is not set" in _clean_error(argv, capsys)


def _parsers(monkeypatch):
    """Every argument parser of the CLI: the top level's subcommands and each pass-through command's own."""
    captured = []

    class Captured(Exception):
        pass

    def capture(self, args=None, namespace=None):
        captured.append(self)
        raise Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for module in PASS_THROUGH.values():
        with pytest.raises(Captured):
            importlib.import_module(module).main([])
    with pytest.raises(Captured):
        main(["env"])
    top = captured[-1]
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            captured += [p for name, p in action.choices.items() if name not in PASS_THROUGH]
    return captured


def test_every_option_has_help(monkeypatch):
    missing = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}" for p in _parsers(monkeypatch)
               for a in p._actions if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert not missing, "options without help: " + ", ".join(missing)


def _tree_digest(folder):
    digest = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            digest[os.path.relpath(path, folder)] = hashlib.md5(open(path, "rb").read()).hexdigest()
    return digest


def test_train_refuses_to_replace_a_trained_model(dataset_2d, nnunet_env, capsys):
    """`nnunet_ssl train` into a fold folder that holds a checkpoint: refused (continue with --c, or --overwrite)."""
    folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset801_T2D", "nnUNetTrainer__nnUNetPlans__2d",
                          "fold_3")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "checkpoint_final.pth"), "wb") as f:
        f.write(b"a user's trained model")
    before = _tree_digest(folder)
    message = _clean_error(["train", "801", "2d", "3", "--epochs", "1", "--iters", "1"], capsys)
    assert "checkpoint_final.pth" in message and "--c" in message and "--overwrite" in message
    assert _tree_digest(folder) == before
