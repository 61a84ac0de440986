"""Fewer labeled cases than nnU-Net's 5 folds (issue: low-label cross-validation)."""
import glob
import json
import os

import pytest

from conftest import train_in_process
from nnunet_ssl.data.splits import SplitError, ensure_splits
from nnunet_ssl.data.pool import preprocess_unlabeled

FOUR, THREE = "Dataset801_T2D", "Dataset803_T2D"


@pytest.fixture(scope="module")
def four_labeled(dataset_2d):
    return dataset_2d


@pytest.fixture(scope="module")
def three_labeled(three_labeled_no_pool):
    preprocess_unlabeled(803, ["2d"], num_processes=1, verbose=False)  # no-op when up to date
    return three_labeled_no_pool


def _splits(nnunet_env, name):
    return json.load(open(os.path.join(nnunet_env["nnUNet_preprocessed"], name, "splits_final.json")))


def _val_cases(nnunet_env, name, trainer, fold):
    folder = os.path.join(nnunet_env["nnUNet_results"], name, f"{trainer}__nnUNetPlans__2d", f"fold_{fold}",
                          "validation")
    return sorted(os.path.basename(f) for f in glob.glob(os.path.join(folder, "*.png")))


def test_split_is_leave_one_out_over_labeled_cases_only(four_labeled, three_labeled, nnunet_env):
    for name, n in ((FOUR, 4), (THREE, 3)):
        splits = _splits(nnunet_env, name)
        labeled = [f"case{i:03d}" for i in range(n)]
        assert len(splits) == n
        assert sorted(v for fold in splits for v in fold["val"]) == labeled
        for fold in splits:
            assert len(fold["val"]) == 1 and sorted(fold["train"] + fold["val"]) == labeled


def test_baseline_and_ssl_trainer_train_every_fold_kind_on_four_labeled(four_labeled, nnunet_env, capsys):
    """In process (the commands train every fold kind in the benchmark's, the self-train command's and the
    family tests)."""
    from nnunet_ssl.commands.cli import main

    # stock nnUNetTrainer through nnU-Net's own trainer and split, fold 0, a 1 x 2 iteration budget (nnU-Net's
    # nnUNetTrainer_1epoch runs 250 iterations + 50 validation iterations: minutes on CPU for nothing more)
    main(["train", "801", "2d", "0", "-tr", "nnUNetTrainer", "--epochs", "1", "--iters", "2", "-device", "cpu"])
    assert "Using splits from existing split file" in capsys.readouterr().out
    # the project's SSL trainer as nnUNetv2_train runs it, fold all; fold 0 validates the same case as the baseline
    # (fold all validates on its own training cases: not what this test checks)
    train_in_process("801", "2d", "all", "nnUNetTrainerMeanTeacher", validate=False)
    expected = [c + ".png" for c in _splits(nnunet_env, FOUR)[0]["val"]]
    assert _val_cases(nnunet_env, FOUR, "nnUNetTrainer", 0) == expected
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    mean_teacher = get_trainer_from_args("801", "2d", 0, "nnUNetTrainerMeanTeacher", "nnUNetPlans",
                                         device=torch.device("cpu"))
    assert [c + ".png" for c in mean_teacher.do_split()[1]] == expected
    assert os.path.isfile(os.path.join(nnunet_env["nnUNet_results"], FOUR, "nnUNetTrainerMeanTeacher__nnUNetPlans__2d",
                                       "fold_all", "checkpoint_final.pth"))


def test_three_labeled_baseline_fold_all_and_ssl_last_fold(three_labeled, nnunet_env):
    """In process: nnUNetTrainer on fold all and the SSL trainer on the last of the 3 leave-one-out folds start,
    train a step and validate the split's case."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    labeled, last_fold = [f"case{i:03d}" for i in range(3)], _splits(nnunet_env, THREE)[2]
    for trainer_name, fold in (("nnUNetTrainer", "all"), ("nnUNetTrainerMeanTeacher", 2)):
        trainer = get_trainer_from_args("803", "2d", fold, trainer_name, "nnUNetPlans", device=torch.device("cpu"))
        trainer.on_train_start()
        try:
            trainer.train_step(next(trainer.dataloader_train))
            train, val = trainer.do_split()
            assert (sorted(train), sorted(val)) == ((labeled, labeled) if fold == "all" else
                                                    (sorted(last_fold["train"]), last_fold["val"]))
        finally:
            trainer.on_train_end()


def test_user_split_is_respected_and_checked(tmp_path):
    labeled = ["a", "b", "c"]
    custom = [{"train": ["a", "b"], "val": ["c"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(custom))
    assert "existing split kept (1 folds)" in ensure_splits(str(tmp_path), labeled, ["u1"])
    assert json.loads((tmp_path / "splits_final.json").read_text()) == custom
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["u1"]}]))
    with pytest.raises(SplitError, match="unlabeled cases"):
        ensure_splits(str(tmp_path), labeled, ["u1"])
    with pytest.raises(SplitError, match="at least 2"):
        ensure_splits(str(tmp_path / "new"), ["a"])


def test_five_or_more_labeled_gives_nnunets_own_split(tmp_path):
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    labeled = [f"c{i}" for i in range(7)]
    ensure_splits(str(tmp_path), labeled)
    assert json.loads((tmp_path / "splits_final.json").read_text()) == \
        json.loads(json.dumps(generate_crossval_split(labeled, seed=12345, n_splits=5)))
