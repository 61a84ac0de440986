"""`nnunet_ssl leaderboard`: trainers x metrics over cross-validation folds and test sets, as Markdown, CSV, plots.

For each dataset (several datasets = several label budgets of the same data) and trainer it gathers:
- cross-validation: every fold of splits_final.json whose `fold_X/validation` nnU-Net finished, evaluated
  against the preprocessed ground truth; missing folds are listed, never silently dropped. Fold `all` has no
  held-out cases (its validation cases were trained on) and is never reported as cross-validation;
- test: every `test_predictions_fold_<f>` folder (exactly that name: not an interrupted run's `*.partial*`) in the
  model folder (the benchmark runner writes them, or `nnUNetv2_predict -o <model folder>/test_predictions_fold_<f>`),
  evaluated against the raw `labelsTs`.
Metrics are nnunet_ssl.evaluation.metrics (mean +- std over cases; for CV also std over fold means). Training time per
epoch comes from the checkpoints' nnU-Net log.

The results folder is only read. Evaluations are cached in the output folder (summaries/); an up-to-date
summary_ssl.json next to the predictions (the benchmark's) is read, never written.
"""
import csv
import io
import json
import os
import re
from typing import Dict, List, Sequence

import numpy as np

from nnunet_ssl.evaluation.metrics import (FAILED_DICE, HIGHER_IS_BETTER, METRICS, OVER, UNDER, case_volume_ratio,
                                           evaluate_folder, summarize)
from nnunet_ssl.utilities.atomic import write_json, write_text

TEST_PREFIX = "test_predictions_fold_"
TEST_FOLDER = re.compile(re.escape(TEST_PREFIX) + r"(\d+|all)")
CSV_COLUMNS = (["dataset", "n_labeled", "n_unlabeled", "trainer", "evaluation", "draw", "run", "folds", "folds_missing",
                "n_cases"]
               + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
               + ["Dice_fold_std", "Dice_median", "failed_cases", "volume_ratio_median", "under_segmented",
                  "over_segmented", "epochs", "iterations_per_epoch", "s_per_epoch",
                  "s_per_iter", "peak_rss_gb", "peak_gpu_gb"])


def finished_test_folders(model_folder: str) -> List[str]:
    """The finished test prediction folders of a model folder: exactly `test_predictions_fold_<fold>` (never an
    interrupted run's `*.partial*` folder)."""
    if not os.path.isdir(model_folder):
        return []
    return sorted(d for d in os.listdir(model_folder) if TEST_FOLDER.fullmatch(d)
                  and os.path.isdir(os.path.join(model_folder, d)))


def _summary_of(summary_file: str, prediction_folder: str, cases: List[str], newest: float,
                nsd_tolerance: float):
    """The summary in `summary_file` if it is one of exactly these prediction files (same paths), newer than all
    of them, at this NSD tolerance; else None."""
    if not os.path.isfile(summary_file) or os.path.getmtime(summary_file) < newest:
        return None
    with open(summary_file) as f:
        summary = json.load(f)
    predicted = [os.path.abspath(c["prediction_file"]) for c in summary.get("per_case", [])]
    if summary.get("nsd_tolerance_mm") == nsd_tolerance and \
            sorted(predicted) == [os.path.abspath(os.path.join(prediction_folder, c)) for c in cases]:
        return summary
    return None


def _cached_summary(reference_folder, prediction_folder, dataset_json, nsd_tolerance, num_processes,
                    cache_file: str = None) -> dict:
    """Evaluate once. A summary is reused while it holds exactly the folder's prediction files, is newer than all
    of them and has the NSD tolerance asked for: the leaderboard's own `cache_file` or the summary_ssl.json that
    the benchmark (or `nnunet_ssl evaluate -o`) wrote next to the predictions. Only `cache_file` is ever written:
    the prediction folder is not the leaderboard's. Without `cache_file` nothing is written."""
    cases = sorted(f for f in os.listdir(prediction_folder) if f.endswith(dataset_json["file_ending"]))
    if cases:  # (no predictions: evaluate_folder says so)
        newest = max(os.path.getmtime(os.path.join(prediction_folder, f)) for f in cases)
        for candidate in filter(None, (cache_file, os.path.join(prediction_folder, "summary_ssl.json"))):
            summary = _summary_of(candidate, prediction_folder, cases, newest, nsd_tolerance)
            if summary is not None:
                return summary
    if cache_file:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    return evaluate_folder(reference_folder, prediction_folder, dataset_json, cache_file, nsd_tolerance,
                           num_processes, cases_from_predictions=True)


def training_time(model_folder: str, folds: Sequence[str]) -> dict:
    """Epochs, iterations per epoch (nnU-Net's debug.json) and mean seconds per epoch (the final
    checkpoints' log; nnU-Net's epoch time includes its per-epoch validation)."""
    import torch
    per_epoch, epochs, iters = [], None, None
    for fold in folds:
        folder = os.path.join(model_folder, f"fold_{fold}")
        if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
            log = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                             weights_only=False)["logging"]
            per_epoch += [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
            epochs = len(log["epoch_end_timestamps"])
        if os.path.isfile(os.path.join(folder, "debug.json")):
            with open(os.path.join(folder, "debug.json")) as f:
                iters = int(json.load(f)["num_iterations_per_epoch"])
    return {"epochs": epochs, "iterations_per_epoch": iters,
            "s_per_epoch": float(np.mean(per_epoch)) if per_epoch else None}


def make_row(summary: dict, **info) -> dict:
    """A leaderboard row of a summary (metrics.evaluate_folder's); `case_ids` (the reference file names) and
    `case_dice` (each case's mean foreground Dice, in the same order) pair the cases of two trainers;
    `case_volume_ratio` (predicted / true volume) says whether a case is under- or over-segmented."""
    fg = summary["foreground"]
    ratios = np.array([case_volume_ratio(c) for c in summary["per_case"]])
    known = ratios[np.isfinite(ratios)]
    row = {**info, "n_cases": summary["n_cases"], "Dice_median": fg["Dice"]["median"],
           "failed_cases": summary["failed_cases"], "case_dice": summary["case_mean_dice"],
           "case_ids": [os.path.basename(c["reference_file"]) for c in summary["per_case"]],
           "case_volume_ratio": ratios.tolist(),
           "volume_ratio_median": float(np.median(known)) if known.size else None,
           "under_segmented": int((known < UNDER).sum()), "over_segmented": int((known > OVER).sum())}
    for m in METRICS:
        row[f"{m}_mean"], row[f"{m}_std"] = fg[m]["mean"], fg[m]["std"]
    return row


def dataset_counts(dataset_name: str) -> Dict[str, int]:
    from nnunetv2.paths import nnUNet_raw
    from nnunet_ssl.data.splits import labeled_case_ids
    from nnunet_ssl.data.pool import find_unlabeled_cases

    raw = os.path.join(nnUNet_raw, dataset_name)
    with open(os.path.join(raw, "dataset.json")) as f:
        dj = json.load(f)
    unlabeled_folder = os.path.join(raw, "imagesUnlabeled")
    return {"n_labeled": len(labeled_case_ids(raw, dj)),
            "n_unlabeled": len(find_unlabeled_cases(raw, dj)) if os.path.isdir(unlabeled_folder) else 0}


def collect(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
            results_folder: str = None, nsd_tolerance: float = 1.0, num_processes: int = 2,
            extra: Dict[str, dict] = None, cache_folder: str = None) -> List[dict]:
    """Leaderboard rows (cross-validation and test) of one dataset; `extra[trainer]` is merged into its rows.
    Reads the results folder, never writes into it; evaluations are cached under `cache_folder` (if given)."""
    from nnunet_ssl.utilities.inputs import dataset_name, nnunet_folder

    name = dataset_name(dataset, needs=("nnUNet_raw", "nnUNet_preprocessed"))
    nnUNet_raw, nnUNet_preprocessed = nnunet_folder("nnUNet_raw"), nnunet_folder("nnUNet_preprocessed")
    results_folder = results_folder or nnunet_folder("nnUNet_results")
    with open(os.path.join(nnUNet_raw, name, "dataset.json")) as f:
        dj = json.load(f)
    splits_file = os.path.join(nnUNet_preprocessed, name, "splits_final.json")
    n_folds = len(json.load(open(splits_file))) if os.path.isfile(splits_file) else 5
    base = {"dataset": name, **dataset_counts(name)}

    def summary_of(reference_folder, model, sub):
        cache = os.path.join(cache_folder, name, os.path.basename(model), sub, "summary_ssl.json") \
            if cache_folder else None
        return _cached_summary(reference_folder, os.path.join(model, sub), dj, nsd_tolerance, num_processes, cache)

    rows = []
    for trainer in trainers:
        model = os.path.join(results_folder, name, f"{trainer}__{plans}__{configuration}")
        info = {**base, "trainer": trainer, "model_folder": model, **(extra or {}).get(trainer, {})}
        done = [str(f) for f in range(n_folds)
                if os.path.isfile(os.path.join(model, f"fold_{f}", "validation", "summary.json"))]
        missing = [str(f) for f in range(n_folds) if str(f) not in done]
        if done:
            summaries = [summary_of(os.path.join(nnUNet_preprocessed, name, "gt_segmentations"),
                                    model, os.path.join(f"fold_{f}", "validation")) for f in done]
            per_case = [c for s in summaries for c in s["per_case"]]
            pooled = summarize(per_case)
            pooled.update(n_cases=sum(s["n_cases"] for s in summaries), per_case=per_case)
            fold_dice = [s["foreground"]["Dice"]["mean"] for s in summaries]
            rows.append(make_row(pooled, **info, **training_time(model, done), evaluation="cross-validation",
                                 folds=" ".join(done), folds_missing=" ".join(missing),
                                 Dice_fold_std=float(np.std(fold_dice))))
        elif os.path.isdir(model):
            rows.append({**info, "evaluation": "cross-validation", "folds": "", "folds_missing": " ".join(missing)})
        for d in finished_test_folders(model):
            fold = d[len(TEST_PREFIX):]
            summary = summary_of(os.path.join(nnUNet_raw, name, "labelsTs"), model, d)
            rows.append(make_row(summary, **info, **training_time(model, [fold]), evaluation=f"test (fold {fold})",
                                 folds=fold, folds_missing=""))
        if not os.path.isdir(model):
            rows.append({**info, "evaluation": "missing", "folds": "", "folds_missing": "all (no model folder)"})
    return rows


def _fmt(value, digits=4):
    if value is None or value == "":
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def table_cells(rows: List[dict]):
    """(header, rows of cell strings) of the leaderboard table (Markdown and report.html); draw and run columns
    where rows have them (the benchmark's --draws, --runs)."""
    repeats = any(r.get("draw") is not None for r in rows)
    header = ["dataset (labeled/unlabeled)", "trainer", "evaluation"] + (["draw", "run"] if repeats else []) + [
        "cases", "Dice", "Jaccard", "HD95 mm", "ASSD mm", "NSD", "HD95 vox", "ASSD vox", "median Dice",
        f"Dice < {FAILED_DICE}", "volume / true (median)", f"under < {UNDER} / over > {OVER}", "s/iter", "s/epoch",
        "peak RAM GB"]
    table = []
    for r in rows:
        first = [f"{r['dataset']} ({r['n_labeled']}/{r['n_unlabeled']})", r["trainer"],
                 r["evaluation"] + (f", missing folds {r['folds_missing']}" if r.get("folds_missing")
                                    and "Dice_mean" in r else "")]
        first += [str(r.get("draw", "")), str(r.get("run", ""))] if repeats else []
        if "Dice_mean" not in r:
            cells = first + [f"no results; missing folds: {r['folds_missing']}"] + [""] * (len(header) - len(first) - 1)
        else:
            cells = first + [str(r["n_cases"])]
            for m in METRICS:
                digits = 4 if HIGHER_IS_BETTER[m] else 2
                cells.append(f"{r[m + '_mean']:.{digits}f} ± {r[m + '_std']:.{digits}f}")
            cells += [_fmt(r["Dice_median"]), str(r["failed_cases"]), _fmt(r.get("volume_ratio_median"), 2),
                      f"{r['under_segmented']} / {r['over_segmented']}" if "under_segmented" in r else "-",
                      _fmt(r.get("s_per_iter"), 3),
                      _fmt(r.get("s_per_epoch"), 1), _fmt(r.get("peak_rss_gb"), 2)]
        table.append(cells)
    return header, table


def markdown_table(rows: List[dict]) -> str:
    return markdown(*table_cells(rows))


LEADERBOARD_NOTE = (f"Mean ± std over cases. Dice < {FAILED_DICE}: cases whose mean foreground Dice is below "
                    f"{FAILED_DICE}. Volume / true: each case's predicted over true volume (the mean over the labels "
                    f"in its reference), its median over cases, and the cases below {UNDER} (under-segmented) and "
                    f"above {OVER} (over-segmented). HD95/ASSD: MONAI surface distances, in mm and in voxels; NSD at "
                    "the stated tolerance. s/iter: training iterations only (data loading included, validation "
                    "excluded).")


def statistics_markdown(statistics: List[dict]) -> str:
    """The paired statistics under a heading line, as a Markdown table with its note ('' without any)."""
    from nnunet_ssl.evaluation.statistics import STATISTICS_NOTE, statistics_cells

    if not statistics:
        return ""
    return (f"Paired differences to {statistics[0]['reference']}\n\n{markdown(*statistics_cells(statistics))}\n\n"
            f"{STATISTICS_NOTE}")


def _write_csv(path: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(path, text.getvalue())


def repeats_markdown(summary: List[dict], statistics: Sequence[dict] = ()) -> str:
    """The table over runs and draws (statistics.repeat_summary) under a heading line, with its note; with the
    paired `statistics`, the summary against the reference (statistics.summary_cells) before it."""
    from nnunet_ssl.evaluation.statistics import REPEATS_NOTE, SUMMARY_NOTE, repeat_cells, summary_cells

    header, cells = summary_cells(summary, statistics)
    first = f"Summary\n\n{markdown(header, cells)}\n\n{SUMMARY_NOTE}\n\n## " if statistics else ""
    return f"{first}Over runs and draws\n\n{markdown(*repeat_cells(summary))}\n\n{REPEATS_NOTE}"


def write_leaderboard(rows: List[dict], out_folder: str, title: str = "Leaderboard", statistics: List[dict] = None,
                      figures: Dict[str, str] = None, training_curves: Dict[str, str] = None,
                      commands: Sequence = (), repeats: List[dict] = None) -> Dict[str, str]:
    """Into `out_folder`: leaderboard.md (with the paired statistics), leaderboard.csv, paired_statistics.csv and
    .json, dice_per_case.png, paired_differences.png (where something is paired), (several label budgets)
    dice_vs_labeled.png, and report.html with all of them,
    `figures` (heading -> PNG, e.g. overlays), `training_curves` (label -> fold folder; None: those of the rows'
    models and folds) and `commands`.
    `statistics`: nnunet_ssl.evaluation.statistics.paired_statistics(rows) (None: computed here).
    `repeats`: statistics.repeat_summary(rows) of a benchmark with runs and draws: first in leaderboard.md and
    report.html, and repeats.json."""
    from nnunet_ssl.evaluation.report import write_report
    from nnunet_ssl.evaluation.statistics import STAT_KEYS, paired_statistics

    statistics = paired_statistics(rows) if statistics is None else statistics
    os.makedirs(out_folder, exist_ok=True)
    files = {"markdown": os.path.join(out_folder, "leaderboard.md"), "csv": os.path.join(out_folder, "leaderboard.csv"),
             "paired_csv": os.path.join(out_folder, "paired_statistics.csv"),
             "paired_json": os.path.join(out_folder, "paired_statistics.json")}
    paired = f"\n\n## {statistics_markdown(statistics)}" if statistics else ""
    over = f"## {repeats_markdown(repeats, statistics)}\n\n## Each draw and run\n\n" if repeats else ""
    write_text(files["markdown"], f"# {title}\n\n{over}{markdown_table(rows)}\n\n{LEADERBOARD_NOTE}{paired}\n")
    if repeats:
        files["repeats"] = os.path.join(out_folder, "repeats.json")
        write_json(files["repeats"], repeats)
    _write_csv(files["csv"], CSV_COLUMNS, rows)
    _write_csv(files["paired_csv"], STAT_KEYS, statistics)
    write_json(files["paired_json"], statistics)
    scored = [r for r in rows if "case_dice" in r]
    plots = {}
    if scored:
        files["dice_per_case"] = plots["Dice per case"] = \
            _plot_per_case(scored, os.path.join(out_folder, "dice_per_case.png"))
        if len({(r["trainer"], r["evaluation"], r["n_labeled"]) for r in scored}) > \
                len({(r["trainer"], r["evaluation"]) for r in scored}):
            files["dice_vs_labeled"] = plots["Mean Dice against labeled cases"] = \
                _plot_vs_labeled(scored, os.path.join(out_folder, "dice_vs_labeled.png"))
    paired = [s for s in statistics if s.get("paired", True)]
    if paired:
        files["paired_differences"] = plots["Paired differences to the reference, 95% intervals"] = \
            _plot_paired(paired, os.path.join(out_folder, "paired_differences.png"))
    curves = training_curve_folders(rows) if training_curves is None else training_curves
    files["report"] = write_report(os.path.join(out_folder, "report.html"), title, rows, statistics,
                                   {**plots, **(figures or {})}, curves, commands, repeats=repeats or ())
    return files


def _save_figure(fig, path):
    import matplotlib.pyplot as plt
    fig.savefig(path + ".tmp", dpi=120, format="png")
    plt.close(fig)
    os.replace(path + ".tmp", path)


def _plot_per_case(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    def two_lines(trainer):  # long names of neighbouring boxes would overlap on one line
        return trainer.replace("Trainer", "Trainer\n", 1) if len(trainer) > 20 else trainer
    def repeat(row):  # the run of a benchmark with repeats: otherwise two runs' boxes carry the same label
        return f" run {row['run']}" if row.get("run") is not None else ""
    labels = [f"{two_lines(r['trainer'])}\n{r['evaluation']}\n{r['dataset']} L={r['n_labeled']}{repeat(r)}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(rows)), 5))
    ax.boxplot([r["case_dice"] for r in rows], showfliers=False)
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(r["case_dice"])), r["case_dice"], s=10, alpha=0.6)
    ax.axhline(FAILED_DICE, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(1, len(rows) + 1), labels, fontsize=7)
    ax.set_ylabel("Dice per case (mean over foreground labels)")
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def _plot_paired(statistics, path):
    """Forest plot of the paired statistics: each entry's mean difference to its reference in Dice points with its
    bootstrap interval, one row per trainer (and draw and run), the pooled entries in bold: a gain whose interval
    crosses 0 is not told apart from noise."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nnunet_ssl.evaluation.statistics import CONFIDENCE, POOLED

    def label(s):
        if s.get("draw") is None:  # a leaderboard of several datasets or evaluations
            return f"{s['trainer']}, {s['dataset']} {s['evaluation']}"
        return f"{s['trainer']} " + ("(pooled)" if s["draw"] == POOLED else f"(draw {s['draw']}, run {s['run']})")

    entries = sorted(statistics, key=lambda s: (s["trainer"], s.get("draw") == POOLED))
    colours = {t: f"C{i % 10}" for i, t in enumerate(dict.fromkeys(s["trainer"] for s in entries))}
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * len(entries)))
    for y, s in enumerate(reversed(entries)):
        mean, low, high = (100 * s[k] for k in ("mean_difference", "ci_low", "ci_high"))
        pooled = s.get("draw") == POOLED
        ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="D" if pooled else "o", capsize=3,
                    color=colours[s["trainer"]], markersize=7 if pooled else 5, linewidth=2 if pooled else 1)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(entries)), [label(s) for s in reversed(entries)], fontsize=7)
    references = ", ".join(dict.fromkeys(s["reference"] for s in entries))
    ax.set_xlabel(f"mean Dice difference to {references} (points), {int(CONFIDENCE * 100)}% bootstrap interval")
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def _plot_vs_labeled(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key in sorted({(r["trainer"], r["evaluation"]) for r in rows}):
        pts = sorted((r["n_labeled"], r["Dice_mean"], r["Dice_std"]) for r in rows if (r["trainer"], r["evaluation"]) == key)
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=f"{key[0]} ({key[1]})")
    ax.set_xscale("log")
    ax.set_xlabel("labeled cases")
    ax.set_ylabel("mean Dice")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def parser():
    import argparse
    p = argparse.ArgumentParser(prog="nnunet_ssl leaderboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", nargs="+", required=True, help="dataset(s); several = label budgets of the same data")
    p.add_argument("-c", required=True, help="configuration")
    p.add_argument("-tr", nargs="+", required=True, help="trainers")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("--results", default=None, help="results folder (default: $nnUNet_results)")
    p.add_argument("-o", default="nnunet_ssl_leaderboard",
                   help="output folder: the tables, plots and, in summaries/, the cached evaluations "
                        "(default: nnunet_ssl_leaderboard)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm")
    p.add_argument("-np", type=int, default=2, help="processes for the evaluation (default: 2)")
    p.add_argument("--reference", default=None, help="trainer the others are compared with, case by case "
                                                     "(default: nnUNetTrainer if listed, else the first)")
    return p


def training_curve_folders(rows: Sequence[dict]) -> Dict[str, str]:
    """label -> fold folder of each row's model and folds (where nnU-Net's progress.png and progress_ssl.png are)."""
    folders = {}
    for r in rows:
        for fold in (r.get("folds") or "").split():
            folder = os.path.join(r.get("model_folder", ""), f"fold_{fold}")
            if r.get("model_folder") and os.path.isdir(folder):
                folders.setdefault(f"{r['trainer']}, {r['dataset']}, fold {fold}", folder)
    return folders


def main(argv=None):
    import shlex
    import sys

    from nnunet_ssl.evaluation.statistics import paired_statistics

    argv = sys.argv[1:] if argv is None else list(argv)
    a = parser().parse_args(argv)
    cache = os.path.join(a.o, "summaries")
    rows = [r for d in a.d for r in collect(d, a.c, a.tr, a.p, a.results, a.nsd_tolerance, a.np, cache_folder=cache)]
    statistics = paired_statistics(rows, a.reference, unpaired="warn")  # e.g. an unfinished cross-validation
    files = write_leaderboard(rows, a.o, f"Leaderboard: {', '.join(a.d)} {a.c}", statistics,
                              commands=["nnunet_ssl leaderboard " + shlex.join(argv)])
    print(markdown_table(rows) + (f"\n\n{statistics_markdown(statistics)}" if statistics else ""))
    print("\n" + "\n".join(f"{k}: {v}" for k, v in files.items()))
