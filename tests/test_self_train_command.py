"""`nnunet_ssl self-train` end to end on a tiny 2D dataset on CPU: two rounds with the change filter, the first
round's pool predicted in parts, a resumed training, the splits of the round datasets, and clean errors for bad
input. One chain of commands (each trains and predicts for real), checked by the tests that read it."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import nnunet_ssl_cli, prepare, refused
from nnunet_ssl.components.pseudo_labels import splits_with_pseudo_labeled

SOURCE = "Dataset806_T2D"
WORK = "self_train_nnUNetTrainer__nnUNetPlans__2d"
BUDGET = ["--epochs", "2", "--iters", "3", "--val-iters", "1", "-device", "cpu", "-np", "1"]
E2E = ["self-train", "-d", "806", "-c", "2d", "-f", "0", "--rounds", "2", "--filter", "change",
       "--min-agreement", "0.0", "-npp", "0", "-nps", "0", "--target-ids", "861", "862"] + BUDGET
POOL = [f"unl{i:04d}" for i in range(5)]
LABELED = [f"case{i:03d}" for i in range(4)]


def _files(*folders, content=False) -> dict:
    """path -> (size, mtime, sha256 if content) of every file under the folders."""
    found = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                st = os.stat(path)
                digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if content else None
                found[path] = (st.st_size, st.st_mtime_ns, digest)
    return found


def _ids(folder, ending=".png", channel=False):
    cut = len(ending) + (5 if channel else 0)
    return sorted({f[:-cut] for f in os.listdir(folder) if f.endswith(ending)})


@pytest.fixture(scope="module")
def source(nnunet_env):
    """4 labeled (leave-one-out split written up front), 5 unlabeled, 2 test PNGs; planned and preprocessed."""
    prepare(nnunet_env, 806, 2, "2d", pool=False, n_labeled=4, n_unlabeled=5, n_test=2, size=40)
    nnunet_ssl_cli("make-splits", "-d", "806")
    raw, pre = (os.path.join(nnunet_env[k], SOURCE) for k in ("nnUNet_raw", "nnUNet_preprocessed"))
    return {"raw": raw, "pre": pre, "results": nnunet_env["nnUNet_results"]}


def _without(args, *options):
    """args without the given options and their values."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in options:
            skip = True
        else:
            out.append(a)
    return out


@pytest.fixture(scope="module")
def e2e(nnunet_env, source):
    """Two rounds, the first round's pool predicted in two parts (separate jobs) before the main run, which then
    runs twice; then the final training, made to look interrupted, continued. The outputs and the file states
    between the steps."""
    sources_before = _files(source["raw"], source["pre"], content=True)
    work = os.path.join(source["results"], SOURCE, WORK)
    pseudo = os.path.join(work, "round_1", "pseudo_labels")
    part_args = _without(E2E, "-npp", "-nps") + ["-npp", "1", "-nps", "1", "--num-parts", "2"]
    steps = {"stop": nnunet_ssl_cli(*E2E, "--stop-before", "predict"),
             "partial_before_parts": os.path.exists(pseudo + ".partial")}
    steps["part0"] = nnunet_ssl_cli(*part_args, "--part-id", "0")
    steps["part0_ids"], steps["part0_complete"] = _ids(pseudo + ".partial"), os.path.exists(pseudo)
    steps["part0_files"] = _files(pseudo + ".partial")
    # the main run before part 1's job is done: stops, names the part and its cases, predicts nothing itself
    steps["early"] = nnunet_ssl_cli(*E2E, check=False)
    steps["after_early"] = _files(pseudo + ".partial")
    steps["part1"] = nnunet_ssl_cli(*part_args, "--part-id", "1")
    steps["part1_ids"], steps["partial_after_parts"] = _ids(pseudo), os.path.exists(pseudo + ".partial")
    steps["parts_record"] = os.path.exists(pseudo + ".parts.json")
    steps["round_1_built_by_parts"] = os.path.exists(os.path.join(nnunet_env["nnUNet_raw"], "Dataset861_T2DST1"))
    steps["part_predictions"] = _files(pseudo)

    first = nnunet_ssl_cli(*E2E)
    state = json.load(open(os.path.join(work, "state.json")))
    datasets = [state["round_datasets"][k] for k in ("1", "2")]
    outputs = [os.path.join(source["results"], SOURCE)] + [
        os.path.join(nnunet_env[root], d) for d in datasets for root in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                         "nnUNet_results")]
    after_first = _files(*outputs)
    second = nnunet_ssl_cli(*E2E)
    after_second = _files(*outputs)

    # a final training stopped before its end: checkpoint_latest.pth, no checkpoint_final.pth -> continued (--c)
    fold = os.path.join(source["results"], datasets[1], "nnUNetTrainer__nnUNetPlans__2d", "fold_0")
    os.replace(os.path.join(fold, "checkpoint_final.pth"), os.path.join(fold, "checkpoint_latest.pth"))
    resumed = nnunet_ssl_cli(*E2E)
    return {"first": first, "second": second, "resumed": resumed, "steps": steps, "work": work, "pseudo": pseudo,
            "fold": fold, "datasets": datasets, "env": nnunet_env, "sources_before": sources_before,
            "sources_after": _files(source["raw"], source["pre"], content=True),
            "after_first": after_first, "after_second": after_second, **source}


def test_round_datasets_hold_labeled_and_kept_pseudo_labelled_cases(e2e):
    assert e2e["datasets"] == ["Dataset861_T2DST1", "Dataset862_T2DST2"]  # --target-ids
    original_json = json.load(open(os.path.join(e2e["raw"], "dataset.json")))
    for k, name in enumerate(e2e["datasets"], start=1):
        raw = os.path.join(e2e["env"]["nnUNet_raw"], name)
        kept = json.load(open(os.path.join(e2e["work"], f"round_{k}", "filter.json")))["kept"]
        assert kept == POOL  # --min-agreement 0: nothing dropped
        assert _ids(os.path.join(raw, "imagesTr"), channel=True) == sorted(LABELED + kept)
        assert _ids(os.path.join(raw, "labelsTr")) == sorted(LABELED + kept)
        assert _ids(os.path.join(raw, "imagesTs"), channel=True) == ["test000", "test001"]
        # the source's images are hard links (no copy), the labeled labels too
        for sub, f in (("imagesTr", "case000_0000.png"), ("labelsTr", "case000.png"), ("imagesTs", "test000_0000.png")):
            assert os.path.samefile(os.path.join(raw, sub, f), os.path.join(e2e["raw"], sub, f))
        assert os.path.samefile(os.path.join(raw, "imagesTr", "unl0003_0000.png"),
                                os.path.join(e2e["raw"], "imagesUnlabeled", "unl0003_0000.png"))
        for case in POOL:  # a pseudo label is a label map of its image's shape
            image = np.asarray(Image.open(os.path.join(raw, "imagesTr", f"{case}_0000.png")))
            seg = np.asarray(Image.open(os.path.join(raw, "labelsTr", f"{case}.png")))
            assert seg.shape == image.shape[:2] == (40, 40)
            assert set(np.unique(seg)) <= {0, 1, 2}
            predicted = np.asarray(Image.open(os.path.join(e2e["work"], f"round_{k}", "pseudo_labels", f"{case}.png")))
            assert np.array_equal(seg, predicted)
        dataset_json = json.load(open(os.path.join(raw, "dataset.json")))
        assert dataset_json["numTraining"] == 4 + len(kept)
        assert dataset_json["nnunet_ssl_self_training"]["source_dataset"] == SOURCE
        assert dataset_json["nnunet_ssl_self_training"]["round"] == k
        assert {key: v for key, v in dataset_json.items() if key not in ("numTraining", "nnunet_ssl_self_training")} \
            == {key: v for key, v in original_json.items() if key != "numTraining"}


def test_round_datasets_reuse_the_plans_and_keep_pseudo_labels_out_of_validation(e2e):
    original_plans = json.load(open(os.path.join(e2e["pre"], "nnUNetPlans.json")))
    original_splits = json.load(open(os.path.join(e2e["pre"], "splits_final.json")))
    for name in e2e["datasets"]:
        pre = os.path.join(e2e["env"]["nnUNet_preprocessed"], name)
        plans = json.load(open(os.path.join(pre, "nnUNetPlans.json")))
        assert plans["dataset_name"] == name
        assert {k: v for k, v in plans.items() if k != "dataset_name"} == \
            {k: v for k, v in original_plans.items() if k != "dataset_name"}
        assert open(os.path.join(pre, "dataset_fingerprint.json")).read() == \
            open(os.path.join(e2e["pre"], "dataset_fingerprint.json")).read()
        splits = json.load(open(os.path.join(pre, "splits_final.json")))
        assert len(splits) == len(original_splits) == 4
        for fold, original in zip(splits, original_splits):
            assert fold["val"] == original["val"]  # every original validation fold, unchanged
            assert sorted(fold["train"]) == sorted(original["train"] + POOL)
            assert not set(fold["val"]) & set(POOL)
        data = os.path.join(pre, "nnUNetPlans_2d")
        assert sorted(f[:-5] for f in os.listdir(data) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd")) \
            == sorted(LABELED + POOL)
    assert not any(n.startswith(".") for n in os.listdir(e2e["env"]["nnUNet_preprocessed"]))  # no temp left


def test_splits_with_pseudo_labelled_cases_in_training_only():
    splits = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["b", "c"], "val": ["a"]}]
    new = splits_with_pseudo_labeled(splits, ["u2", "u1"])
    assert [f["val"] for f in new] == [["c"], ["a"]]
    assert new[0]["train"] == ["a", "b", "u1", "u2"] and new[1]["train"] == ["b", "c", "u1", "u2"]
    assert splits[0]["train"] == ["a", "b"]  # the original is not modified
    with pytest.raises(ValueError, match="also labeled"):
        splits_with_pseudo_labeled(splits, ["a"])


def test_models_filter_and_summary(e2e):
    results = e2e["env"]["nnUNet_results"]
    for name in [SOURCE] + e2e["datasets"]:
        for fold in (0,):
            assert os.path.isfile(os.path.join(results, name, "nnUNetTrainer__nnUNetPlans__2d", f"fold_{fold}",
                                               "checkpoint_final.pth"))
    round_1 = json.load(open(os.path.join(e2e["work"], "round_1", "filter.json")))
    assert round_1["method"] == "change" and round_1["scores"] == {} and round_1["kept"] == POOL
    round_2 = json.load(open(os.path.join(e2e["work"], "round_2", "filter.json")))
    assert sorted(round_2["scores"]) == POOL and all(0 <= s <= 1 for s in round_2["scores"].values())
    assert round_2["min_agreement"] == 0.0 and round_2["n_kept"] == 5 and round_2["dropped"] == []
    out = e2e["first"].stdout
    assert "kept 5 of 5 pseudo-labelled cases" in out
    assert "[round 2] filter: scoring 5 pseudo-labelled cases" in out
    assert "nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d 862 -c 2d -tr nnUNetTrainer -p nnUNetPlans -f 0" \
        in out
    summary = json.load(open(os.path.join(e2e["work"], "summary.json")))
    assert summary["final_model"]["dataset"] == "Dataset862_T2DST2"
    assert [(r["dataset"], r["n_labeled"], r["n_pseudo_kept"], r["n_pseudo_dropped"]) for r in summary["rounds"]] \
        == [("Dataset861_T2DST1", 4, 5, 0), ("Dataset862_T2DST2", 4, 5, 0)]
    assert os.path.isfile(os.path.join(e2e["work"], "logs", "predict_round_2.log"))


def test_second_run_does_nothing_and_sources_are_untouched(e2e):
    assert e2e["after_second"] == e2e["after_first"]  # no new, changed or removed file anywhere
    out = e2e["second"].stdout
    assert "predict the pool: done" in out and "filter: done" in out and "build Dataset862_T2DST2: done" in out
    # per round: predict, build, preprocess; then the final model's one fold
    assert out.count(": done (") == 2 * 3 + 1 and "training" not in out.replace("self-training", "")
    assert e2e["sources_after"] == e2e["sources_before"]  # raw and preprocessed source: byte for byte, mtimes


def test_other_settings_are_refused(e2e, capsys):
    assert "other settings" in refused(capsys, [a if a != "0.0" else "0.5" for a in E2E])


def test_first_round_predicted_in_parts_then_the_main_run_then_a_resumed_training(e2e):
    """Round 1's pool predicted in two parts as separate jobs, then the main run; then an interrupted final
    training continued."""
    steps, pseudo = e2e["steps"], e2e["pseudo"]
    assert "train Dataset806_T2D fold 0: training" in steps["stop"].stdout
    assert "stopping before predicting" in steps["stop"].stdout and not steps["partial_before_parts"]
    assert steps["part0_ids"] == POOL[0::2] and not steps["part0_complete"]
    assert "parts still to run: --part-id 1" in steps["part0"].stdout
    early = steps["early"]
    assert early.returncode == 2 and "part(s) 1 are not complete" in early.stderr
    assert ", ".join(POOL[1::2][:5]) in early.stderr and steps["after_early"] == steps["part0_files"]
    # the last part completes the folder; the parts' record goes with it; parts only predict
    assert steps["part1_ids"] == POOL and not steps["partial_after_parts"] and not steps["parts_record"]
    assert "the pool is completely predicted" in steps["part1"].stdout and not steps["round_1_built_by_parts"]
    for path, stamp in steps["part0_files"].items():  # part 0's predictions were not redone
        if path.endswith(".png"):
            assert steps["part_predictions"][path.replace(pseudo + ".partial", pseudo)] == stamp

    full = e2e["first"].stdout
    assert "[round 1] predict the pool: done" in full  # by the parts: nothing left to predict in round 1
    assert not [line for line in full.splitlines() if line.startswith("[round 1]") and "to go" in line]
    assert {p: v for p, v in e2e["after_first"].items() if p.startswith(pseudo + os.sep)} == \
        steps["part_predictions"]
    assert "[final] train Dataset862_T2DST2 fold 0: training" in full

    resumed = e2e["resumed"].stdout
    assert "[final] train Dataset862_T2DST2 fold 0: continuing from checkpoint_latest.pth (--c)" in resumed
    log = open(os.path.join(e2e["work"], "logs", "train_Dataset862_T2DST2_fold_0.log"), encoding="utf-8").read()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and not commands[0].endswith("--c") and commands[1].endswith("--c")
    assert os.path.isfile(os.path.join(e2e["fold"], "checkpoint_final.pth"))


def test_incomplete_parts_stop_the_main_run(tmp_path):
    """Unit level, no training: after a part's job, the main run names each incomplete part and its missing
    cases (never predicts them twice nor builds a smaller round dataset); a job with another --num-parts is
    refused. Deleting the parts' record lets the main run predict the rest itself."""
    from nnunet_ssl.commands.self_train.helpers import SelfTrainError
    from nnunet_ssl.commands.self_train.pool_prediction import PoolPredictionStep

    class Run(PoolPredictionStep):
        ending, filter = ".png", "none"

        def __init__(self, num_parts=None, part_id=None):
            self.pool = {f"unl{i:04d}": [] for i in range(7)}
            self.num_parts, self.part_id = num_parts, part_id

        def _say(self, tag, message):
            pass

        def _log(self, name):
            raise AssertionError("nothing may be predicted here")

    final = str(tmp_path / "pseudo_labels")
    os.makedirs(final + ".partial")
    for case in ["unl0000", "unl0003", "unl0006", "unl0001"]:  # part 0 of 3 complete, part 1 half
        open(os.path.join(final + ".partial", case + ".png"), "w").close()
    Run(3, 0)._check_parts(1, final, final + ".partial", sorted(Run().pool), [])  # part 0's job: recorded
    assert json.load(open(final + ".parts.json")) == {"num_parts": 3}
    with pytest.raises(SelfTrainError, match=r"part\(s\) 1, 2 are not complete: 3 case\(s\) have no prediction "
                                             r"in .*pseudo_labels.partial \(unl0002, unl0004, unl0005\)"):
        Run()._predict(1, "Dataset806_T2D", final, ["all"], "predict_round_1")
    with pytest.raises(SelfTrainError, match="predicted in 3 parts .* this job has --num-parts 2: use --num-parts 3"):
        Run(2, 1)._predict(1, "Dataset806_T2D", final, ["all"], "predict_round_1")
    os.remove(final + ".parts.json")
    with pytest.raises(AssertionError, match="nothing may be predicted"):  # the main run would predict the rest
        Run()._predict(1, "Dataset806_T2D", final, ["all"], "predict_round_1")


# ---------------------------------------------------------------------- bad input: exit 2 and a clear message
def _error(capsys, *args):
    return refused(capsys, ["self-train", *args])


def test_bad_options_are_refused_before_any_work(source, capsys):
    base = ["-d", "806", "-c", "2d", "-tr", "nnUNetTrainerDoesNotTrain", "-device", "cpu"]
    assert "needs --rounds 2" in _error(capsys, *base, "--filter", "change")
    assert "at least 2 numbered folds" in _error(capsys, *base, "--filter", "disagreement", "-f", "all")
    assert "at least 2 numbered folds" in _error(capsys, *base, "--filter", "disagreement", "-f", "0")
    assert "--num-parts and --part-id go together" in _error(capsys, *base, "--num-parts", "2")
    assert "ignores -num_parts" in _error(capsys, *base, "--num-parts", "2", "--part-id", "0", "-npp", "0", "-nps", "0")
    assert "fold(s) [7] do not exist" in _error(capsys, *base, "-f", "0", "7")
    assert "one dataset id per round" in _error(capsys, *base, "--rounds", "2", "--target-ids", "870")
    assert "must differ from each other and from the source" in _error(capsys, *base, "--target-ids", "806")
    assert "has no configuration '3d_fullres'" in _error(capsys, "-d", "806", "-c", "3d_fullres", "-device", "cpu")
    assert "dataset '899' not found" in _error(capsys, "-d", "899", "-c", "2d")
    # a part's job never trains: the model must exist
    err = _error(capsys, *base, "--num-parts", "2", "--part-id", "1", "-npp", "1", "-nps", "1")
    assert "not trained yet" in err and "without --num-parts" in err
    assert not os.path.exists(os.path.join(source["results"], SOURCE,
                                           "self_train_nnUNetTrainerDoesNotTrain__nnUNetPlans__2d"))


def test_missing_pool_and_clashing_ids_are_refused(source, tmp_path, monkeypatch, capsys):
    """A copy of the source (raw without imagesUnlabeled / with a pool case named like a labeled case)."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    shutil.copytree(source["raw"], raw / SOURCE)
    shutil.copytree(source["pre"], pre / SOURCE)
    for var, value in (("nnUNet_raw", raw), ("nnUNet_preprocessed", pre), ("nnUNet_results", tmp_path / "res")):
        monkeypatch.setenv(var, str(value))
    pool = raw / SOURCE / "imagesUnlabeled"
    shutil.copy(pool / "unl0000_0000.png", pool / "case001_0000.png")
    assert "['case001'] are also labeled cases" in _error(capsys, "-d", "806", "-c", "2d", "-device", "cpu")
    shutil.rmtree(pool)
    err = _error(capsys, "-d", "806", "-c", "2d", "-device", "cpu")
    assert str(pool) in err and "does not exist" in err


def test_disagreement_filter_scores_each_fold_against_the_ensemble(source, nnunet_env):
    """The filter step alone, on hand-made predictions: folds that agree keep a case, a dissenting fold drops it."""
    from nnunet_ssl.commands.self_train import SelfTraining

    st = SelfTraining("806", "2d", trainer="nnUNetTrainerFilterOnly", folds=["0", "1"], filter="disagreement",
                      min_agreement=0.85, device="cpu", num_processes=1)
    square = np.zeros((40, 40), np.uint8)
    square[10:20, 10:20] = 1
    square[12:16, 12:16] = 2
    dissent = {"unl0001": np.zeros_like(square),  # fold 1 sees nothing: Dice 0 for both labels
               "unl0003": np.roll(square, 1, axis=1)}  # one column off: Dice 5/6 (lesion), 3/4 (core)
    for folder in (st._pseudo_folder(1), st._member_folder(1, 0), st._member_folder(1, 1)):
        os.makedirs(folder)
        for case in POOL:
            seg = dissent.get(case, square) if folder == st._member_folder(1, 1) else square
            Image.fromarray(seg).save(os.path.join(folder, case + ".png"))
    kept, dropped = st._filter(1)
    result = json.load(open(os.path.join(st._round_folder(1), "filter.json")))
    assert dropped == ["unl0001"] and kept == [c for c in POOL if c != "unl0001"]
    assert result["scores"]["unl0001"] == pytest.approx(0.5)  # mean of fold 0 (1.0) and fold 1 (0.0)
    assert result["scores"]["unl0000"] == 1.0 and result["scores"]["unl0003"] == pytest.approx((1 + 19 / 24) / 2)
    assert result["method"] == "disagreement" and result["min_agreement"] == 0.85
    assert st._filter(1) == (kept, dropped)  # done: read back, not recomputed


def test_round_0_from_a_semi_supervised_trainer(nnunet_env, capsys):
    """--round0-trainer: the source's model is the SSL trainer's (its pool preprocessed first, else refused), its
    predictions are round 1's pseudo labels, and the round's and final model are -tr's."""
    from nnunet_ssl.data.pool import preprocess_unlabeled

    prepare(nnunet_env, 807, 2, "2d", pool=False, n_labeled=4, n_unlabeled=5, n_test=2, size=40)
    args = ["self-train", "-d", "807", "-c", "2d", "-f", "all", "--round0-trainer", "nnUNetTrainerMeanTeacher",
            "--target-ids", "871", "--epochs", "1", "--iters", "2", "--val-iters", "1", "-device", "cpu", "-np", "1",
            "-npp", "0", "-nps", "0"]
    err = refused(capsys, args)
    assert "Unlabeled pool not found" in err and "nnunet_ssl preprocess-unlabeled -d Dataset807_T2D -c 2d" in err
    assert "-tr must be a supervised one" in refused(capsys, args + ["-tr", "nnUNetTrainerSGRS"])
    preprocess_unlabeled(807, ["2d"], num_processes=1, verbose=False)

    out = nnunet_ssl_cli(*args).stdout
    results = nnunet_env["nnUNet_results"]
    work = os.path.join(results, "Dataset807_T2D",
                        "self_train_nnUNetTrainerMeanTeacher_then_nnUNetTrainer__nnUNetPlans__2d")
    assert "round 0 nnUNetTrainerMeanTeacher, then nnUNetTrainer" in out
    for dataset, trainer in (("Dataset807_T2D", "nnUNetTrainerMeanTeacher"), ("Dataset871_T2DST1", "nnUNetTrainer")):
        assert os.path.isfile(os.path.join(results, dataset, f"{trainer}__nnUNetPlans__2d", "fold_all",
                                           "checkpoint_final.pth"))
    assert not os.path.exists(os.path.join(results, "Dataset807_T2D", "nnUNetTrainer__nnUNetPlans__2d"))
    predict_log = open(os.path.join(work, "logs", "predict_round_1.log"), encoding="utf-8").read()
    assert "-tr nnUNetTrainerMeanTeacher" in predict_log.splitlines()[0]
    summary = json.load(open(os.path.join(work, "summary.json"), encoding="utf-8"))
    assert summary["round0_trainer"] == "nnUNetTrainerMeanTeacher" and summary["trainer"] == "nnUNetTrainer"
    assert [(r["pseudo_labels_by"], r["pseudo_labels_trainer"], r["n_pool"]) for r in summary["rounds"]] == \
        [("Dataset807_T2D", "nnUNetTrainerMeanTeacher", 5)]
    assert "-d 871 -c 2d -tr nnUNetTrainer -p nnUNetPlans -f all" in summary["final_model"]["predict"]
    note = json.load(open(os.path.join(nnunet_env["nnUNet_raw"], "Dataset871_T2DST1", "dataset.json"),
                         encoding="utf-8"))
    assert "nnUNetTrainerMeanTeacher__nnUNetPlans__2d" in note["nnunet_ssl_self_training"]["pseudo_labels_by"]
