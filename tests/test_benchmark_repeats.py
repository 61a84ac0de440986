"""The benchmark's repeats (issue 21): labeled draws built from a raw dataset, statistics over runs and draws,
the leaderboard with an unfinished trainer, and the benchmark's runs x draws layout (commands faked: no
training)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from test_safety_evaluation import tree

# ---------------------------------------------------------------------- labeled draws
CANDIDATES = ["c0", "c1", "u0", "u1", "u2", "u3"]


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _mask(i, shape=(8, 8)):
    m = np.zeros(shape, np.uint8)
    m[i % 8, :] = 1  # every case's label is different
    return m


def _fake_raw(root):
    """A raw dataset: c0, c1 labeled, u0..u3 unlabeled, t0, t1 test (8x8 grey PNGs); and a folder with the labels
    of all six training cases (c0, c1 as in labelsTr)."""
    raw, labels = os.path.join(root, "Dataset950_Fake"), os.path.join(root, "all_labels")
    for i, case in enumerate(CANDIDATES):
        sub = "imagesTr" if case.startswith("c") else "imagesUnlabeled"
        _png(os.path.join(raw, sub, f"{case}_0000.png"), np.full((8, 8), 10 * i))
        if case.startswith("c"):
            _png(os.path.join(raw, "labelsTr", f"{case}.png"), _mask(i))
        _png(os.path.join(labels, f"{case}.png"), _mask(i))
    for i in range(2):
        _png(os.path.join(raw, "imagesTs", f"t{i}_0000.png"), np.full((8, 8), 200 + i))
        _png(os.path.join(raw, "labelsTs", f"t{i}.png"), _mask(7 - i))
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "grey"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 2,
                   "file_ending": ".png"}, f)
    return raw, labels


def _label_of(folder, case):
    return np.array(Image.open(os.path.join(folder, case + ".png")))


def test_draws_redistribute_the_training_cases_keep_the_test_set_and_leave_the_source_untouched(tmp_path):
    from nnunet_ssl.data.splits import build_draw, draw_labeled_cases

    raw, labels = _fake_raw(str(tmp_path))
    source, label_source = tree(raw), tree(labels)
    moved_out = moved_in = 0
    for draw in range(2, 7):
        target = str(tmp_path / "draws" / f"Dataset950_Fake_draw{draw}")
        record = build_draw(raw, target, draw, labels)
        labeled = sorted(f[:-4] for f in os.listdir(os.path.join(target, "labelsTr")))
        images = sorted(f[:-9] for f in os.listdir(os.path.join(target, "imagesTr")))
        pool = sorted(f[:-9] for f in os.listdir(os.path.join(target, "imagesUnlabeled")))
        assert labeled == images == record["labeled"] == draw_labeled_cases(CANDIDATES, 2, draw)
        assert len(labeled) == 2 and sorted(labeled + pool) == CANDIDATES and not set(labeled) & set(pool)
        assert record["moved_to_unlabeled"] == sorted({"c0", "c1"} - set(labeled))
        assert record["newly_labeled"] == sorted(set(labeled) - {"c0", "c1"})
        moved_out += len(record["moved_to_unlabeled"])
        moved_in += len(record["newly_labeled"])
        for case in labeled:  # the source's labels where it has them, else the label folder's
            assert np.array_equal(_label_of(os.path.join(target, "labelsTr"), case), _mask(CANDIDATES.index(case)))
        # the labels of the cases moved to the pool are nowhere in the draw
        for case in record["moved_to_unlabeled"]:
            for folder, _, files in os.walk(target):
                for f in files:
                    for theirs in (os.path.join(raw, "labelsTr", case + ".png"), os.path.join(labels, case + ".png")):
                        assert not os.path.samefile(os.path.join(folder, f), theirs)
        for sub in ("imagesTs", "labelsTs"):  # the same test set, the same files
            assert sorted(os.listdir(os.path.join(target, sub))) == sorted(os.listdir(os.path.join(raw, sub)))
            for f in os.listdir(os.path.join(raw, sub)):
                assert os.path.samefile(os.path.join(target, sub, f), os.path.join(raw, sub, f))
        dataset_json = json.load(open(os.path.join(target, "dataset.json")))
        assert dataset_json["numTraining"] == 2 and json.load(open(os.path.join(target, "draw.json"))) == record
        assert record["test"] == ["t0", "t1"] and build_draw(raw, target, draw, labels) == record  # kept
    assert moved_out > 0 and moved_in > 0  # the draws do change the labeled cases
    assert draw_labeled_cases(CANDIDATES, 2, 2) != draw_labeled_cases(CANDIDATES, 2, 3)
    assert tree(raw) == source and tree(labels) == label_source


def test_a_draw_is_written_completely_or_not_at_all_and_bad_label_folders_are_named(tmp_path, monkeypatch):
    from nnunet_ssl.data.splits import SplitError, build_draw, draw_labeled_cases
    from nnunet_ssl.utilities import atomic

    raw, labels = _fake_raw(str(tmp_path))
    draw = next(d for d in range(2, 20) if set(draw_labeled_cases(CANDIDATES, 2, d)) - {"c0", "c1"})
    new = sorted(set(draw_labeled_cases(CANDIDATES, 2, draw)) - {"c0", "c1"})[0]
    parent = tmp_path / "draws"
    target = str(parent / "Dataset950_Fake_draw")
    calls = []
    real_link = atomic.link_file

    def dies_on_the_fourth_file(src, dst, copy_fallback=False):
        calls.append(dst)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_link(src, dst, copy_fallback)

    monkeypatch.setattr(atomic, "link_file", dies_on_the_fourth_file)
    with pytest.raises(KeyboardInterrupt):
        build_draw(raw, target, draw, labels)
    assert os.listdir(parent) == []  # no draw, no hidden half-written one
    monkeypatch.setattr(atomic, "link_file", real_link)

    missing = tmp_path / "missing"
    os.makedirs(missing)
    for f in os.listdir(labels):
        if f != new + ".png":
            os.link(os.path.join(labels, f), missing / f)
    with pytest.raises(SplitError, match=rf"{missing}: no label of 1 case.*{new}\.png"):
        build_draw(raw, target, draw, str(missing))
    other = tmp_path / "other"  # labels of other data: c0's differs from the source's
    os.makedirs(other)
    for f in os.listdir(labels):
        _png(str(other / f), _label_of(labels, f[:-4]) if f != "c0.png" else _mask(5))
    with pytest.raises(SplitError, match=rf"other.c0\.png differs from .*labelsTr.c0\.png"):
        build_draw(raw, target, draw, str(other))
    _png(str(other / "c0.png"), _mask(0))
    _png(str(other / f"{new}.png"), np.zeros((4, 8)))
    with pytest.raises(SplitError, match=rf"{new}\.png: shape \(1, 4, 8\), its image .* has shape \(1, 8, 8\)"):
        build_draw(raw, target, draw, str(other))
    assert not os.path.exists(target)


# ---------------------------------------------------------------------- statistics over runs and draws
def _row(trainer, dice, draw, run, cases=None):
    cases = cases or [f"t{i}.png" for i in range(len(dice))]
    return {"trainer": trainer, "dataset": f"D_draw{draw}", "evaluation": "test (fold all)", "draw": draw, "run": run,
            "case_ids": cases, "case_dice": list(dice), "Dice_mean": float(np.mean(dice)),
            "Dice_median": float(np.median(dice)), "failed_cases": int(np.sum(np.array(dice) < 0.8))}


def _repeated_rows():
    # the reference differs a lot between draws and runs; B is 0.1 above it on every case of every draw and run,
    # so each pair (same case, same draw, same run) is +0.1, while pairing across runs would give losses
    reference = {(1, 1): [0.9, 0.5, 0.75], (1, 2): [0.3, 0.85, 0.6], (2, 1): [0.8, 0.8, 0.2], (2, 2): [0.4, 0.6, 0.85]}
    rows = []
    for (draw, run), dice in reference.items():
        rows += [_row("nnUNetTrainer", dice, draw, run), _row("B", [d + 0.1 for d in dice], draw, run)]
    return rows, reference


def test_statistics_per_draw_and_run_and_pooled_pair_the_same_case_in_the_same_draw_and_run():
    from nnunet_ssl.evaluation.statistics import POOLED, paired_statistics, pooled_statistics

    rows, _ = _repeated_rows()
    per = paired_statistics(rows, n_resamples=200)
    assert [(s["draw"], s["run"], s["trainer"]) for s in per] == [(1, 1, "B"), (1, 2, "B"), (2, 1, "B"), (2, 2, "B")]
    assert all(s["mean_difference"] == pytest.approx(0.1) and s["better"] == 3 for s in per)
    [pooled] = pooled_statistics(rows, n_resamples=200)
    assert (pooled["draw"], pooled["run"], pooled["n_cases"], pooled["n_units"]) == (POOLED, POOLED, 12, 3)
    assert (pooled["better"], pooled["worse"]) == (12, 0) and pooled["mean_difference"] == pytest.approx(0.1)
    assert pooled["median_difference"] == pytest.approx(0.1)
    assert pooled["wilcoxon_p"] == pytest.approx(2 / 2 ** 3)  # 3 test cases (the units), all positive
    assert pooled["ci_low"] == pytest.approx(0.1) and pooled["ci_high"] == pytest.approx(0.1)
    # failed (< 0.8) pairs of the reference, counted by hand: 0.5 0.75 | 0.3 0.6 | 0.2 | 0.4 0.6; B rescues 0.75
    assert (pooled["failed_reference"], pooled["failed"], pooled["rescued"], pooled["newly_failed"]) == (7, 6, 1, 0)


def test_repeat_summary_mean_std_range_and_per_draw():
    from nnunet_ssl.evaluation.statistics import repeat_cells, repeat_summary

    rows, reference = _repeated_rows()
    summary = {s["trainer"]: s for s in repeat_summary(rows)}
    ref = summary["nnUNetTrainer"]
    means = [np.mean(v) for v in reference.values()]
    assert (ref["n_results"], ref["draws"], ref["runs"]) == (4, [1, 2], [1, 2])
    assert ref["Dice_mean_mean"] == pytest.approx(np.mean(means))
    assert ref["Dice_mean_std"] == pytest.approx(np.std(means, ddof=1))
    assert (ref["Dice_mean_min"], ref["Dice_mean_max"]) == pytest.approx((min(means), max(means)))
    assert ref["Dice_median_max"] == pytest.approx(0.8)  # draw 2, run 1
    assert ref["failed_cases_per_draw"] == {"1": 2.0, "2": 1.5} and ref["failed_cases_min"] == 1
    assert ref["failed_cases_std"] == pytest.approx(np.std([2, 2, 1, 2], ddof=1))
    assert ref["Dice_mean_per_draw"]["2"] == pytest.approx(np.mean(means[2:]))
    assert summary["B"]["Dice_mean_mean"] == pytest.approx(np.mean(means) + 0.1)
    header, cells = repeat_cells([ref])
    assert cells[0][2] == "2 x 2 (4 results)" and cells[0][header.index("failed min-max")] == "1 - 2"
    draw_1 = repeat_summary([r for r in rows if r["draw"] == 1])[0]
    assert (draw_1["draws"], draw_1["runs"], draw_1["n_results"]) == ([1], [1, 2], 2)
    one = repeat_summary([rows[0]])[0]
    assert one["Dice_mean_std"] == 0.0 and one["n_results"] == 1


def test_summary_pools_the_paired_difference_and_counts_failed_cases_per_draw_over_the_runs_both_have():
    from nnunet_ssl.evaluation.statistics import paired_statistics, pooled_statistics, repeat_summary, summary_cells

    rows, _ = _repeated_rows()
    rows.append(_row("C", [0.9, 0.5, 0.69], 1, 1))  # draw 1, run 1 only: the 0.75 case 6 points worse
    statistics = paired_statistics(rows, n_resamples=200) + pooled_statistics(rows, n_resamples=200)
    header, cells = summary_cells(repeat_summary(rows), statistics)
    by_trainer = {row[0]: dict(zip(header, row)) for row in cells}
    b, c = by_trainer["B"], by_trainer["C"]
    assert b["draws x runs"] == "2 x 2" and b[header[5]].startswith("+10.00 (+10.00 to +10.00), p = ")
    assert b["better / worse > 5 (larger)"] == "12 / 0"  # rows without volumes: no size split
    # failed (< 0.8) by hand: draw 1: B 1 + 2 against 2 + 2; draw 2: B 1 + 2 against 1 + 2 (0.8 is not failed)
    assert b["failed / nnUNetTrainer's, per draw"] == "3 / 4, 3 / 3" and b["worse > 5 per 20 pairs"] == "0.0"
    # C is paired with draw 1, run 1 only: 3 pairs, 1 worse; the reference's failed cases of that run alone
    assert c["draws x runs"] == "1 x 1" and c["better / worse > 5 (larger)"] == "0 / 1"
    assert c["failed / nnUNetTrainer's, per draw"] == "2 / 2" and c["worse > 5 per 20 pairs"] == "6.7"
    assert by_trainer["nnUNetTrainer"][header[5]] == ""  # the reference is not paired with itself
    incomplete = summary_cells(repeat_summary([r for r in rows if (r["trainer"], r["draw"], r["run"]) != ("B", 2, 2)]),
                               statistics)[1]
    assert {row[0]: row[1] for row in incomplete}["B"] == "2 x 2 (3 of 4)"  # draw 2 lacks its run 2


def test_different_case_sets_are_not_paired_with_a_warning_or_an_error(capsys):
    from nnunet_ssl.evaluation.statistics import StatisticsError, paired_statistics, pooled_statistics

    rows, _ = _repeated_rows()
    rows[3] = _row("B", [0.9, 0.9], 1, 2, cases=["t0.png", "elsewhere.png"])  # draw 1, run 2
    with pytest.raises(StatisticsError, match=r"B \(D_draw1, test \(fold all\), draw 1, run 2\).*elsewhere\.png"):
        paired_statistics(rows, n_resamples=100)  # the benchmark: one test set, a mismatch is an error
    with pytest.raises(StatisticsError, match="elsewhere"):
        pooled_statistics(rows, n_resamples=100)
    stats = paired_statistics(rows, n_resamples=100, unpaired="warn")
    assert [s["paired"] for s in stats] == [True, False, True, True]
    warning = capsys.readouterr().err
    assert "warning: B (D_draw1, test (fold all), draw 1, run 2) and nnUNetTrainer" in warning
    assert "elsewhere.png" in warning and "t1.png" in warning and stats[1]["note"].startswith("not paired")


def test_leaderboard_of_an_unfinished_trainer_writes_everything_and_marks_it_not_paired(tmp_path, capsys):
    """The leaderboard command's path: one trainer's cross-validation lacks a fold, so its cases differ."""
    from nnunet_ssl.evaluation.leaderboard import make_row, write_leaderboard
    from nnunet_ssl.evaluation.metrics import METRICS
    from nnunet_ssl.evaluation.statistics import paired_statistics, repeat_summary

    def summary(dice):
        fg = {m: {"mean": float(np.mean(dice)), "std": 0.1, "median": float(np.median(dice))} for m in METRICS}
        return {"n_cases": len(dice), "foreground": fg, "failed_cases": 0, "case_mean_dice": list(dice),
                "per_case": [{"reference_file": f"/gt/c{i}.png"} for i in range(len(dice))]}

    info = {"dataset": "Dataset1_X", "n_labeled": 4, "n_unlabeled": 6, "evaluation": "cross-validation"}
    rows = [make_row(summary([0.9, 0.8, 0.7, 0.6]), **info, trainer="nnUNetTrainer", folds="0 1"),
            make_row(summary([0.95, 0.85]), **info, trainer="SGRS", folds="0", folds_missing="1")]
    statistics = paired_statistics(rows, unpaired="warn", n_resamples=100)
    assert "SGRS (Dataset1_X, cross-validation) and nnUNetTrainer" in capsys.readouterr().err
    files = write_leaderboard(rows, str(tmp_path), statistics=statistics, training_curves={},
                              repeats=repeat_summary(rows))
    board = open(files["markdown"], encoding="utf-8").read()
    assert "| SGRS | cross-validation, missing folds 1 | 2 |" in board and "not paired: SGRS" in board
    assert "c2.png" in board and "Over runs and draws" in board
    assert json.load(open(files["paired_json"]))[0]["paired"] is False
    assert "not paired: SGRS" in open(files["report"], encoding="utf-8").read()
    assert "paired_differences" not in files  # nothing paired, nothing to plot


# ---------------------------------------------------------------------- benchmark: runs x draws (faked commands)
def test_benchmark_runs_and_draws_layout_records_and_resume(dataset_2d, tmp_path, monkeypatch, capsys):
    """Every command is faked (training; prediction = the ground truth, one case emptied for the second trainer in
    draw 2; the draw's preprocessing: its commands are checked), the surface distances too (Dice is real). A second
    call with more runs trains only the new run and rewrites only its leaderboards."""
    import shutil

    from nnunet_ssl.evaluation import benchmark, metrics
    from nnunet_ssl.utilities import inputs

    def dice_only(pred, ref, spacing, nsd_tolerance_mm=1.0):
        both = pred.sum() + ref.sum()
        return {m: (2 * (pred & ref).sum() / both if both else 1.0) if m == "Dice" else 0.0 for m in metrics.METRICS}

    monkeypatch.setattr(metrics, "binary_metrics", dice_only)

    labels = tmp_path / "all_labels"  # labels of every training case of Dataset801: labelsTr + made-up ones
    shutil.copytree(os.path.join(dataset_2d, "labelsTr"), labels)
    for f in os.listdir(os.path.join(dataset_2d, "imagesUnlabeled")):
        _png(str(labels / f.replace("_0000.png", ".png")), np.pad(np.ones((20, 20)), 14))
    source = tree(dataset_2d)
    ran = []

    def fake_run(cmd, log, env, **progress):
        ran.append(cmd)
        assert bool(progress) == ("train" in cmd)  # a bar for each training, of the benchmark's epochs
        assert progress.get("epochs", 1) == 1
        if cmd[0] == "nnUNetv2_preprocess" or "preprocess-unlabeled" in cmd:
            draw = "all" if "draw_all" in env["nnUNet_raw"] else "2"
            assert env["nnUNet_raw"] == str(out / f"draw_{draw}" / "nnUNet_raw") and cmd[cmd.index("-d") + 1] in \
                ("801", "Dataset801_T2D_draw2")  # the draw's own roots: id 801 names only the draw there
            assert env["nnUNet_preprocessed"] == str(out / f"draw_{draw}" / "nnUNet_preprocessed")
            assert not (draw == "all" and "preprocess-unlabeled" in cmd)  # every case labeled: no pool
        elif "train" in cmd:
            fold = os.path.join(env["nnUNet_results"], cmd[4], f"{cmd[cmd.index('-tr') + 1]}__nnUNetPlans__2d",
                                "fold_all")
            os.makedirs(fold, exist_ok=True)
            open(os.path.join(fold, "checkpoint_final.pth"), "wb").close()
            if cmd[4].endswith("_all_labeled"):  # the upper bound has no pool to audit
                assert "--pool-labels" not in cmd
            else:
                assert cmd[cmd.index("--pool-labels") + 1] == str(labels)  # every training audits its pool
            with open(cmd[cmd.index("--stats-json") + 1], "w") as f:
                json.dump({"train_seconds": 1.0, "s_per_iter": 0.5, "peak_gpu_gb": 0.0,
                           "pool_audit": {"n_cases": 6, "dice_mean": 0.5}}, f)
        else:  # nnUNetv2_predict: the ground truth of the draw's test set
            truth = os.path.join(os.path.dirname(cmd[cmd.index("-i") + 1]), "labelsTs")
            predicted = cmd[cmd.index("-o") + 1]
            shutil.copytree(truth, predicted)
            if (cmd[cmd.index("-tr") + 1] == "B" and "draw2" in cmd[cmd.index("-d") + 1]) or \
                    cmd[cmd.index("-d") + 1].endswith("_all_labeled"):
                _png(os.path.join(predicted, sorted(os.listdir(predicted))[0]), np.zeros((48, 48)))
        return 0.2, 1.0

    monkeypatch.setattr(benchmark, "_run", fake_run)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    monkeypatch.setattr(inputs, "trainer_class", lambda name: nnUNetTrainer)  # "B": a stand-in trainer
    out = tmp_path / "bench"
    args = dict(dataset="801", configuration="2d", trainers=["nnUNetTrainer", "B"], epochs=1, iterations=2,
                out=str(out), num_processes=1, draws=2, draw_labels=str(labels), pool_labels=str(labels))
    with pytest.raises(benchmark.BenchmarkError, match="--draw-labels FOLDER"):
        benchmark.run_benchmark(**{**args, "draw_labels": None})
    benchmark.run_benchmark(**args, runs=1)
    first = len(ran)
    benchmark.run_benchmark(**args, runs=2)
    trained = [(c[4], os.path.basename(os.path.dirname(c[c.index("--stats-json") + 1]))) for c in ran if "train" in c]
    assert len([c for c in ran[first:] if "train" in c]) == 4  # only run 2: 2 trainers x 2 draws
    assert not [c for c in ran[first:] if c[0] == "nnUNetv2_preprocess"] and len(trained) == 8

    setup = json.load(open(out / "benchmark.json"))
    draw = json.load(open(out / "draw_2" / "nnUNet_raw" / "Dataset801_T2D_draw2" / "draw.json"))
    assert (setup["runs"], setup["draws"]) == (2, 2) and setup["labeled_cases"]["2"] == draw["labeled"]
    assert setup["labeled_cases"]["1"] == ["case000", "case001", "case002", "case003"] != draw["labeled"]
    pre = out / "draw_2" / "nnUNet_preprocessed" / "Dataset801_T2D_draw2"
    plans = json.load(open(pre / "nnUNetPlans.json"))
    ours = json.load(open(os.path.join(os.environ["nnUNet_preprocessed"], "Dataset801_T2D", "nnUNetPlans.json")))
    assert plans == {**ours, "dataset_name": "Dataset801_T2D_draw2"}  # the same plans; results under the draw's name
    assert json.load(open(pre / "dataset.json"))["numTraining"] == 4
    stamps = {p: os.stat(out / p / "report.html").st_mtime_ns for p in ("draw_1/run_1", "draw_1/run_2")}
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Over runs and draws" in report and "--runs 2 --draws 2 --draw-labels" in report
    # the forest plot of the paired differences (each draw and run, and pooled), in the report too
    assert (out / "paired_differences.png").stat().st_size > 1000 and "Paired differences to the reference" in report
    assert "--pool-labels" in report
    # again: nothing new runs, the leaderboards of the runs are kept; a record of another test set is refused
    summary_file = json.load(open(out / "draw_2" / "run_2" / "records" / "B.json"))["summary_file"]
    summary = json.load(open(summary_file))
    full_summary = dict(summary)
    summary["per_case"], summary["case_mean_dice"] = summary["per_case"][:1], summary["case_mean_dice"][:1]
    with open(summary_file, "w") as f:
        json.dump(summary, f)
    with pytest.raises(benchmark.BenchmarkError, match=r"different test sets.*B \(draw 2, run 2\): 1 cases"):
        benchmark.run_benchmark(**args, runs=2)
    assert len(ran) == first + 4 * 2 and stamps == {p: os.stat(out / p / "report.html").st_mtime_ns for p in stamps}
    for d in (1, 2):
        for r in (1, 2):
            record = json.load(open(out / f"draw_{d}" / f"run_{r}" / "records" / "B.json"))
            assert (record["draw"], record["run"], record["labeled_cases"]) == (d, r, setup["labeled_cases"][str(d)])
            assert record["Dice_mean"] == (1.0 if d == 1 else 0.5) and record["n_test"] == 2
            assert record["pool_audit"] == {"n_cases": 6, "dice_mean": 0.5}
            assert (out / f"draw_{d}" / f"run_{r}" / "report.html").is_file()
    paired = json.load(open(out / "paired_statistics.json"))
    assert [(p["draw"], p["run"]) for p in paired] == [(1, 1), (2, 1), (1, 2), (2, 2), ("all", "all")]
    assert paired[-1]["n_cases"] == 8 and paired[-1]["mean_difference"] == pytest.approx(-0.25)
    repeats = {s["trainer"]: s for s in json.load(open(out / "repeats.json"))}
    assert repeats["B"]["Dice_mean_per_draw"] == {"1": 1.0, "2": 0.5} and repeats["B"]["n_results"] == 4
    board = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "## Over runs and draws" in board and "| B | test (fold all) | 2 x 2 (4 results) | 0.7500 ± 0.2887" in board
    assert board.index("## Summary") < board.index("## Over runs and draws")
    assert tree(dataset_2d) == source

    # --upper-bound, added later: only the reference trains again, on every training case labeled, once per run
    from nnunet_ssl.core.trainer import nnUNetTrainerSSL
    with pytest.raises(benchmark.BenchmarkError, match="--upper-bound labels every training case"):
        benchmark.run_benchmark(**{**args, "draw_labels": None, "draws": 1}, upper_bound=True)
    monkeypatch.setattr(inputs, "trainer_class", lambda name: nnUNetTrainerSSL)
    with pytest.raises(benchmark.BenchmarkError, match="must be a supervised trainer"):
        benchmark.run_benchmark(**args, runs=2, upper_bound=True)
    monkeypatch.setattr(inputs, "trainer_class", lambda name: nnUNetTrainer)
    summary["per_case"], summary["case_mean_dice"] = full_summary["per_case"], full_summary["case_mean_dice"]
    with open(summary_file, "w") as f:
        json.dump(summary, f)
    before, sheet = len(ran), out / "draw_1" / "run_2" / "overlays.png"
    columns_before = Image.open(sheet).size[0]
    benchmark.run_benchmark(**args, runs=2, upper_bound=True)
    assert Image.open(sheet).size[0] > columns_before  # the draws' overlays show the upper bound's predictions too
    new = ran[before:]
    assert [c[0] for c in new if "train" not in c][:1] == ["nnUNetv2_preprocess"]
    assert not [c for c in new if "preprocess-unlabeled" in c]
    trained = [(c[4], c[c.index("-tr") + 1]) for c in new if "train" in c]
    assert trained == [("Dataset801_T2D_all_labeled", "nnUNetTrainer")] * 2  # runs 1 and 2
    everything = out / "draw_all" / "nnUNet_raw" / "Dataset801_T2D_all_labeled"
    n_training = len(os.listdir(os.path.join(dataset_2d, "imagesTr"))) + \
        len(os.listdir(os.path.join(dataset_2d, "imagesUnlabeled")))
    assert len(os.listdir(everything / "labelsTr")) == n_training and not os.listdir(everything / "imagesUnlabeled")
    upper = f"nnUNetTrainer (all {n_training} labeled)"
    paired = [p for p in json.load(open(out / "paired_statistics.json")) if p["trainer"] == upper]
    # paired with the reference of every draw and run (one of its two test cases emptied: -0.5), and pooled
    assert [(p["draw"], p["run"]) for p in paired] == [(1, 1), (2, 1), (1, 2), (2, 2), ("all", "all")]
    assert all(p["mean_difference"] == pytest.approx(-0.5) for p in paired) and paired[-1]["n_cases"] == 8
    repeats = {s["trainer"]: s for s in json.load(open(out / "repeats.json"))}
    assert repeats[upper]["n_results"] == 2 and repeats[upper]["Dice_mean_per_draw"] == {"all": 0.5}
    assert repeats["B"]["n_results"] == 4  # the draws' own results are unchanged
    assert upper in (out / "draw_1" / "run_2" / "leaderboard.md").read_text(encoding="utf-8")
    assert "--upper-bound" in (out / "report.html").read_text(encoding="utf-8")
    assert json.load(open(out / "benchmark.json"))["upper_bound"] is True
    assert tree(dataset_2d) == source

    # --report-only: the tables of what exists (here: a trainer and a run that never trained), nothing run
    before, board = len(ran), out / "leaderboard.md"
    os.remove(board)
    capsys.readouterr()
    benchmark.run_benchmark(**{**args, "trainers": ["nnUNetTrainer", "B", "C"]}, runs=3, upper_bound=True,
                            report_only=True)
    said = capsys.readouterr().out
    assert len(ran) == before and board.is_file()  # nothing prepared, trained or predicted; the tables written
    assert "C (draw 1, run 1)" in said and "B (draw 2, run 3)" in said and "nnUNetTrainer (draw all, run 3)" in said
    repeats = {s["trainer"]: s for s in json.load(open(out / "repeats.json"))}
    assert "C" not in repeats and repeats["B"]["n_results"] == 4 and repeats[upper]["n_results"] == 2
    assert not (out / "draw_1" / "run_3").exists() and json.load(open(out / "benchmark.json"))["runs"] == 2
    with pytest.raises(benchmark.BenchmarkError, match="has no record of C"):
        benchmark.run_benchmark(**{**args, "trainers": ["C"]}, runs=2, report_only=True)
    with pytest.raises(benchmark.BenchmarkError, match="holds no benchmark"):
        benchmark.run_benchmark(**{**args, "out": str(tmp_path / "elsewhere")}, report_only=True)

    # --postprocess: the same records evaluated again after nnU-Net's postprocessing, tables apart, nothing trained
    with pytest.raises(benchmark.BenchmarkError, match="--postprocess largest: one of largest-foreground"):
        benchmark.run_benchmark(**args, runs=2, report_only=True, postprocess="largest")
    predicted = json.load(open(out / "draw_1" / "run_1" / "records" / "B.json"))["summary_file"]
    first = os.path.join(os.path.dirname(predicted),
                         sorted(f for f in os.listdir(os.path.dirname(predicted)) if f.endswith(".png"))[0])
    wrong = _label_of(os.path.dirname(first), os.path.basename(first)[:-4])
    wrong[:13] = 1  # a blob larger than the lesion, apart from it: the postprocessing keeps it (Dice 0)
    _png(first, wrong)
    benchmark.run_benchmark(**args, runs=2, upper_bound=True, report_only=True, postprocess="largest-foreground")
    assert len(ran) == before
    postprocessed = out / "postprocessed_largest-foreground"
    assert "postprocessed: all but the largest connected foreground component removed" in \
        (postprocessed / "leaderboard.md").read_text(encoding="utf-8")
    assert "--postprocess largest-foreground" in (postprocessed / "report.html").read_text(encoding="utf-8")
    assert (out / "draw_2" / "run_2" / "postprocessed_largest-foreground" / "B" / "summary_ssl.json").is_file()
    assert (out / "draw_all" / "run_1" / "postprocessed_largest-foreground" / "nnUNetTrainer").is_dir()
    repeats = {s["trainer"]: s for s in json.load(open(postprocessed / "repeats.json"))}
    assert repeats["B"]["Dice_mean_per_draw"] == {"1": 0.75, "2": 0.5}  # raw: 1.0 and 0.5
    assert repeats["nnUNetTrainer"] == {s["trainer"]: s for s in json.load(open(out / "repeats.json"))}[
        "nnUNetTrainer"]  # one square per case: nothing removed
    assert tree(dataset_2d) == source


# ---------------------------------------------------------------------- --postprocess
def test_postprocessing_keeps_the_largest_component_of_the_foreground_or_of_each_class():
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

    from nnunet_ssl.evaluation.postprocessing import postprocessing_steps

    dataset_json = {"labels": {"background": 0, "liver": 1, "kidney": 2}}
    seg = np.zeros((12, 12), np.uint8)
    seg[0:4, 0:4] = 1  # the liver, and a stray speck of it
    seg[10, 10] = 1
    seg[6:8, 0:2] = 2  # a kidney, apart from the liver, and a smaller second blob of kidney
    seg[6, 10] = 2
    whole = apply_postprocessing(seg, *postprocessing_steps("largest-foreground", dataset_json))
    assert whole.sum() == seg[0:4, 0:4].sum() and not (whole == 2).any()  # one component of all foreground left
    each = apply_postprocessing(seg, *postprocessing_steps("largest-per-class", dataset_json))
    assert each[10, 10] == 0 and each[6, 10] == 0 and (each[0:4, 0:4] == 1).all() and (each[6:8, 0:2] == 2).all()


def test_postprocessed_summary_is_written_apart_and_redone_only_for_newer_predictions(tmp_path):
    from nnunet_ssl.evaluation.benchmark import postprocessed_summary
    from nnunet_ssl.evaluation.metrics import evaluate_folder

    raw, out = tmp_path / "raw", tmp_path / "bench"
    predictions = out / "draw_1" / "run_1" / "nnUNet_results" / "test_predictions_fold_all"
    lesion = np.pad(np.ones((8, 8)), 8)
    for case in ("t0", "t1"):
        _png(str(raw / "labelsTs" / f"{case}.png"), lesion)
        stray = lesion.copy()
        if case == "t1":
            stray[0:2, 0:2] = 1  # a speck apart from the lesion: Dice 128 / 132
        _png(str(predictions / f"{case}.png"), stray)
    dataset_json = {"labels": {"background": 0, "lesion": 1}, "file_ending": ".png"}
    source = predictions / "summary_ssl.json"
    evaluate_folder(str(raw / "labelsTs"), str(predictions), dataset_json, str(source), 1.0, 1)
    before = tree(str(predictions))
    record = {"trainer": "T", "draw": 1, "run": 1, "summary_file": str(source)}
    summary_file = postprocessed_summary(record, str(out), "largest-foreground", str(raw), dataset_json, 1.0, 1)
    assert summary_file == str(out / "draw_1" / "run_1" / "postprocessed_largest-foreground" / "T" / "summary_ssl.json")
    assert json.load(open(source))["case_mean_dice"][1] == pytest.approx(128 / 132)
    assert json.load(open(summary_file))["case_mean_dice"] == [1.0, 1.0]
    assert tree(str(predictions)) == before and sorted(os.listdir(os.path.dirname(os.path.dirname(summary_file)))) \
        == ["T"]  # the predictions untouched, no partial folder left
    written = os.stat(summary_file).st_mtime_ns
    assert postprocessed_summary(record, str(out), "largest-foreground", str(raw), dataset_json, 1.0, 1) == summary_file
    assert os.stat(summary_file).st_mtime_ns == written  # up to date: kept
    _png(str(predictions / "t0.png"), np.zeros_like(lesion))  # predicted again (a new model): evaluated again
    evaluate_folder(str(raw / "labelsTs"), str(predictions), dataset_json, str(source), 1.0, 1)
    postprocessed_summary(record, str(out), "largest-foreground", str(raw), dataset_json, 1.0, 1)
    assert json.load(open(summary_file))["case_mean_dice"] == [0.0, 1.0]


def test_write_postprocessing_gives_a_pkl_that_stock_nnunet_applies_and_never_replaces_a_file(tmp_path, capsys):
    from conftest import refused, run_cli

    from nnunet_ssl.commands.cli import main

    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "lesion": 1}, "file_ending": ".png"}))
    plans = tmp_path / "plans.json"  # what nnUNetv2_apply_postprocessing reads of the plans: the image reader
    plans.write_text(json.dumps({"image_reader_writer": "NaturalImage2DIO"}))
    prediction = np.pad(np.ones((8, 8)), 8)
    prediction[0:2, 0:2] = 1  # a speck apart from the lesion
    _png(str(tmp_path / "pred" / "t0.png"), prediction)
    pkl = tmp_path / "postprocessing.pkl"
    main(["write-postprocessing", "--kind", "largest-foreground", "-djfile", str(dataset_json), "-o", str(pkl)])
    assert "nnUNetv2_apply_postprocessing" in capsys.readouterr().out
    run_cli("nnUNetv2_apply_postprocessing", "-i", tmp_path / "pred", "-o", tmp_path / "post", "-pp_pkl_file", pkl,
            "-np", "1", "-plans_json", plans, "-dataset_json", dataset_json)
    assert (_label_of(str(tmp_path / "post"), "t0") == np.pad(np.ones((8, 8)), 8)).all()  # the speck removed
    written = pkl.read_bytes()
    assert str(pkl) in refused(capsys, ["write-postprocessing", "--kind", "largest-per-class", "-djfile",
                                        dataset_json, "-o", pkl])
    assert pkl.read_bytes() == written and sorted(os.listdir(tmp_path)) == \
        ["dataset.json", "plans.json", "post", "postprocessing.pkl", "pred"]  # no temporary file left
    assert "no 'labels'" in refused(capsys, ["write-postprocessing", "--kind", "largest-foreground", "-djfile",
                                             plans, "-o", tmp_path / "other.pkl"])
