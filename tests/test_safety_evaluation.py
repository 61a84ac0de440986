"""The evaluation commands never write into a folder they did not create (issue 18), leave nothing half-written
behind, and a killed benchmark resumes."""
import hashlib
import os
import tempfile

import pytest


def tree(root) -> dict:
    """Every folder and file under `root`, files with their md5."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            found[os.path.relpath(os.path.join(folder, d), root) + "/"] = None
        for f in files:
            with open(os.path.join(folder, f), "rb") as fh:
                found[os.path.relpath(os.path.join(folder, f), root)] = hashlib.md5(fh.read()).hexdigest()
    return found


# ---------------------------------------------------------------------- bench-step
def test_bench_step_leaves_a_trained_model_and_nnunet_results_untouched(dataset_2d, tmp_path, monkeypatch):
    from nnunet_ssl.evaluation.bench_step import bench

    results = tmp_path / "results"
    model = results / "Dataset801_T2D" / "nnUNetTrainer__nnUNetPlans__2d"
    (model / "fold_all").mkdir(parents=True)
    for name, content in (("fold_all/checkpoint_final.pth", b"trained weights"),
                          ("fold_all/checkpoint_latest.pth", b"latest"),
                          ("fold_all/training_log_2024_1_1_00_00_00.txt", b"the user's log"),
                          ("plans.json", b'{"the user": "plans"}'), ("dataset.json", b"{}")):
        (model / name).write_bytes(content)
    before = tree(results)
    monkeypatch.setenv("nnUNet_results", str(results))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    timed = bench("801", "2d", ["nnUNetTrainer"], "all", iterations=1, warmup=1, blocks=1, floor_repeats=1)
    assert timed["nnUNetTrainer"]["s_per_iter"] > 0
    assert tree(results) == before
    assert not [d for d in os.listdir(temp) if "bench_step" in d]  # its temporary results folder is gone


# ---------------------------------------------------------------------- benchmark: planning, child environment
class _Stop(Exception):
    pass


def _first_benchmark_command(tmp_path, monkeypatch):
    """run_benchmark on a raw dataset that is not planned yet, stopped at the first command it runs (planning):
    (command, environment)."""
    from nnunet_ssl.data.synthetic import write_synthetic_dataset
    from nnunet_ssl.evaluation import benchmark

    for var in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{var}", str(tmp_path / var))
    write_synthetic_dataset(str(tmp_path / "raw"), 871, "Unplanned", n_labeled=2, n_unlabeled=1, n_test=1, size=16)
    commands = []

    def first_command(cmd, log, env, **progress):
        commands.append((cmd, env))
        raise _Stop

    monkeypatch.setattr(benchmark, "_run", first_command)
    with pytest.raises(_Stop):
        benchmark.run_benchmark("871", "2d", ["nnUNetTrainer"], 1, 2, out=str(tmp_path / "bench"))
    return commands[0]


def test_benchmark_plans_an_unplanned_dataset_with_an_id_nnunet_accepts(tmp_path, monkeypatch):
    import sys

    from nnunetv2.experiment_planning import plan_and_preprocess_entrypoints as entry

    cmd, _ = _first_benchmark_command(tmp_path, monkeypatch)
    assert cmd[0] == "nnUNetv2_plan_and_preprocess"
    # nnU-Net's own entry point parses the command (its -d takes integer ids); the work itself is not done
    called = {}
    monkeypatch.setattr(entry, "extract_fingerprints", lambda ids, *a, **k: called.setdefault("ids", ids))
    monkeypatch.setattr(entry, "plan_experiments", lambda *a, **k: "nnUNetPlans")
    monkeypatch.setattr(entry, "preprocess", lambda ids, plans, configurations, *a, **k:
                        called.setdefault("configurations", configurations))
    monkeypatch.setattr(sys, "argv", cmd)
    entry.plan_and_preprocess_entry()
    assert called == {"ids": [871], "configurations": ["2d"]}


@pytest.mark.parametrize("user", [None, "/user/trainers", os.pathsep.join(["/user/a", "/user/b"]), "plugin"])
def test_benchmark_adds_the_plugin_trainers_to_the_users_nnunet_exttrainer(user, tmp_path, monkeypatch):
    from nnunet_ssl.utilities.paths import trainers_folder

    user = trainers_folder() if user == "plugin" else user
    if user is None:
        monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    else:
        monkeypatch.setenv("nnUNet_extTrainer", user)
    _, env = _first_benchmark_command(tmp_path, monkeypatch)
    kept = [p for p in (user or "").split(os.pathsep) if p and p != trainers_folder()]
    assert env["nnUNet_extTrainer"].split(os.pathsep) == kept + [trainers_folder()]
    assert env["nnUNet_results"] == str(tmp_path / "bench" / "nnUNet_results")


# ---------------------------------------------------------------------- leaderboard
def _trained_model_tree(tmp_path, monkeypatch):
    """A raw dataset (2 labeled, 2 test cases) and a model folder with fold 0 validated (predictions = ground
    truth) of 2 folds, test predictions of fold all, and what interrupted benchmarks leave: an empty
    `test_predictions_fold_all.partial`, a complete `test_predictions_fold_0.partial`, a hidden
    `.test_predictions_fold_1.partial`. Returns (results folder, model folder)."""
    import json
    import shutil

    from nnunet_ssl.data.synthetic import write_synthetic_dataset

    for var in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{var}", str(tmp_path / var))
    raw = write_synthetic_dataset(str(tmp_path / "raw"), 872, "Board", n_labeled=2, n_unlabeled=1, n_test=2, size=16)
    pre = tmp_path / "preprocessed" / "Dataset872_Board"
    shutil.copytree(os.path.join(raw, "labelsTr"), pre / "gt_segmentations")
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["case001"], "val": ["case000"]},
                                                       {"train": ["case000"], "val": ["case001"]}]))
    model = tmp_path / "results" / "Dataset872_Board" / "nnUNetTrainer__nnUNetPlans__2d"
    (model / "fold_0" / "validation").mkdir(parents=True)
    shutil.copy(os.path.join(raw, "labelsTr", "case000.png"), model / "fold_0" / "validation")
    (model / "fold_0" / "validation" / "summary.json").write_text("{}")
    for d in ("test_predictions_fold_all", "test_predictions_fold_0.partial", ".test_predictions_fold_1.partial"):
        shutil.copytree(os.path.join(raw, "labelsTs"), model / d)
    (model / "test_predictions_fold_all.partial").mkdir()
    return tmp_path / "results", model


def test_leaderboard_reads_only_finished_test_folders_and_writes_nothing_into_the_results(tmp_path, monkeypatch):
    import csv

    from nnunet_ssl.evaluation import leaderboard

    results, model = _trained_model_tree(tmp_path, monkeypatch)
    before = tree(results)
    board = tmp_path / "board"
    args = ["-d", "872", "-c", "2d", "-tr", "nnUNetTrainer", "-o", str(board), "-np", "1"]
    leaderboard.main(args)
    rows = list(csv.DictReader(open(board / "leaderboard.csv", encoding="utf-8")))
    assert [(r["evaluation"], r["folds"], r["folds_missing"]) for r in rows] == \
        [("cross-validation", "0", "1"), ("test (fold all)", "all", "")]
    assert float(rows[1]["Dice_mean"]) == 1 and rows[1]["n_cases"] == "2"
    assert tree(results) == before  # no summary_ssl.json in the model's folders
    cached = {os.path.relpath(os.path.join(d, f), board / "summaries")
              for d, _, files in os.walk(board / "summaries") for f in files}
    assert cached == {os.path.join("Dataset872_Board", model.name, "fold_0", "validation", "summary_ssl.json"),
                      os.path.join("Dataset872_Board", model.name, "test_predictions_fold_all", "summary_ssl.json")}

    def no_evaluation(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(leaderboard, "evaluate_folder", no_evaluation)
    leaderboard.main(args)  # the cache is read
    assert list(csv.DictReader(open(board / "leaderboard.csv", encoding="utf-8"))) == rows


# ---------------------------------------------------------------------- evaluate
def test_evaluate_writes_only_where_asked_and_never_over_an_existing_file(tmp_path, monkeypatch):
    import json

    from nnunet_ssl.evaluation import metrics

    _, model = _trained_model_tree(tmp_path, monkeypatch)
    predictions = model / "test_predictions_fold_all"
    reference = tmp_path / "raw" / "Dataset872_Board" / "labelsTs"
    dataset_json = str(tmp_path / "raw" / "Dataset872_Board" / "dataset.json")
    before = tree(predictions)
    metrics.main([str(reference), str(predictions), "-djfile", dataset_json, "-np", "1"])
    assert tree(predictions) == before  # no -o: printed, nothing written

    users = tmp_path / "summary.json"
    users.write_text("the user's file")
    with pytest.raises(SystemExit) as refused:
        metrics.main([str(reference), str(predictions), "-djfile", dataset_json, "-np", "1", "-o", str(users)])
    assert refused.value.code == 2 and users.read_text() == "the user's file"
    metrics.main([str(reference), str(predictions), "-djfile", dataset_json, "-np", "1", "-o", str(users),
                  "--overwrite"])
    assert json.loads(users.read_text())["n_cases"] == 2 and not os.path.exists(str(users) + ".tmp")


@pytest.mark.parametrize("module", ["bench_step", "benchmark", "leaderboard", "metrics"])
def test_every_option_has_a_help_text(module):
    import importlib
    parser = importlib.import_module(f"nnunet_ssl.evaluation.{module}").parser()
    assert [a.dest for a in parser._actions if not a.help] == []


# ---------------------------------------------------------------------- benchmark: killed, resumed (end to end)
def test_killed_benchmark_resumes_without_retraining_and_leaves_nothing_half_written(dataset_2d, tmp_path, capsys):
    """kill -9 of the whole benchmark while the second trainer trains; the same command again finishes it and
    leaves the first trainer as it was. The user's nnUNet_extTrainer names only their own trainers: the plugin's
    are added for the commands the benchmark runs."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from conftest import SEAM_TRAINERS, nnunet_ssl_cli, refused
    from nnunet_ssl.evaluation.benchmark import RECORD_KEYS

    out = tmp_path / "bench"
    args = ["benchmark", "-d", "801", "-c", "2d", "-tr", "nnUNetTrainer", "nnUNetTrainerMeanTeacher",
            "--epochs", "1", "--iters", "2", "--val-iters", "1", "-o", str(out), "-np", "1"]
    env = {"nnUNet_extTrainer": SEAM_TRAINERS}
    run = out / "draw_1" / "run_1"  # --runs 1 --draws 1: one draw (the dataset as given), one run
    models = run / "nnUNet_results" / "Dataset801_T2D"
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen([sys.executable, "-m", "nnunet_ssl", *args], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **env}, start_new_session=True)
        deadline = time.time() + 300
        # nnU-Net's trainer makes its fold folder when it is built: the second training has started
        while not (models / "nnUNetTrainerMeanTeacher__nnUNetPlans__2d" / "fold_all").is_dir():
            assert killed.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()
            time.sleep(0.05)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    assert not (run / "records" / "nnUNetTrainerMeanTeacher.json").exists()
    first = tree(models / "nnUNetTrainer__nnUNetPlans__2d"), (run / "records" / "nnUNetTrainer.json").read_bytes()

    resumed = nnunet_ssl_cli(*args, env=env)
    assert "nnUNetTrainer (draw 1, run 1): done (record" in resumed.stdout
    assert "nnUNetTrainer (draw 1, run 1): training" not in resumed.stdout
    assert "nnUNetTrainerMeanTeacher (draw 1, run 1): training" in resumed.stdout
    assert (tree(models / "nnUNetTrainer__nnUNetPlans__2d"), (run / "records" / "nnUNetTrainer.json").read_bytes()) \
        == first
    for trainer in ("nnUNetTrainer", "nnUNetTrainerMeanTeacher"):
        record = json.load(open(run / "records" / f"{trainer}.json"))
        assert tuple(record) == RECORD_KEYS and None not in (record["s_per_iter"], record["peak_rss_gb"])
        assert record["n_test"] == 2 and record["n_labeled"] == 4 and record["n_unlabeled"] == 6
        assert record["s_per_iter"] > 0 and record["peak_rss_gb"] > 0.1 and record["epochs"] == 1
        assert 0 <= record["Dice_mean"] <= 1 and (record["draw"], record["run"]) == (1, 1)
        assert record["labeled_cases"] == ["case000", "case001", "case002", "case003"]
        assert os.path.isfile(models / f"{trainer}__nnUNetPlans__2d" / "test_predictions_fold_all" / "summary_ssl.json")
    assert [p for p in tree(out) if p.rstrip("/").endswith(".tmp") or ".partial" in p] == []
    table = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "| Dataset801_T2D (4/6) | nnUNetTrainer | test (fold all) | 1 | 1 | 2 |" in table
    assert "| nnUNetTrainerMeanTeacher | test (fold all) | 1 x 1 (1 results) |" in table  # over runs and draws
    assert "nnUNetTrainerMeanTeacher" in table and (out / "dice_per_case.png").exists()
    assert (run / "overlays.png").stat().st_size > 5000 and (run / "report.html").is_file()
    # the paired sheet exists where the two trainers' Dice differ on a case (after one epoch they may not)
    assert (run / "paired_overlays_nnUNetTrainerMeanTeacher.png").exists() == (
        "nnUNetTrainerMeanTeacher against nnUNetTrainer: its largest losses" in (run / "report.html").read_text(
            encoding="utf-8"))
    paired = json.load(open(out / "paired_statistics.json"))
    assert [(p["trainer"], p["reference"], p["n_cases"], p["draw"]) for p in paired] == \
        [("nnUNetTrainerMeanTeacher", "nnUNetTrainer", 2, 1), ("nnUNetTrainerMeanTeacher", "nnUNetTrainer", 2, "all")]
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "nnunet_ssl benchmark -d Dataset801_T2D -c 2d -tr nnUNetTrainer nnUNetTrainerMeanTeacher" in report
    assert report.count("nnUNetv2_predict") == 2  # and the killed training as well as the resumed one:
    assert report.count("-m nnunet_ssl train Dataset801_T2D 2d all -tr nnUNetTrainerMeanTeacher") == 2
    assert "progress.png" in report and "Paired differences to nnUNetTrainer" in resumed.stdout

    assert "other settings" in refused(capsys, [a if a != "2" else "3" for a in args])
