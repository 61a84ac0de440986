"""Paired comparison of trainers on the same cases: is a difference in mean Dice more than noise?

For each trainer and a reference trainer evaluated on the same cases (same dataset, same evaluation: the same
test set or the same cross-validation folds), with d_i = Dice_trainer(case i) - Dice_reference(case i), each
case's Dice being its mean over the foreground labels:
- mean_difference: mean of d_i; median_difference: median of d_i;
- ci_low, ci_high: percentile bootstrap interval of the mean of d_i (resampling cases with replacement,
  `n_resamples` times, seeded: the same inputs give the same interval);
- wilcoxon_p: two-sided Wilcoxon signed-rank test of d_i (scipy.stats.wilcoxon, zero differences dropped); 1.0
  when every d_i is 0 (nothing differs);
- better, worse: cases with d_i > CHANGE_DICE, d_i < -CHANGE_DICE (5 Dice points);
- better_larger, better_smaller, worse_larger, worse_smaller (where the rows carry each case's predicted / true
  volume): of the better and of the worse cases, those the trainer segments larger / smaller than the reference
  does: whether a trainer loses by over- or by under-segmenting;
- failed, failed_reference: cases with Dice < FAILED_DICE of the trainer and of the reference; rescued: cases
  the reference failed and the trainer did not; newly_failed: the other way round.
Cases are paired by case id (the file name); two trainers with different case sets are not compared (an error,
or with unpaired="warn" an entry marked not paired and a warning), never a comparison of whatever overlaps.

Repeats (`nnunet_ssl benchmark --runs --draws`): rows carrying "draw" and "run" are compared within the same
draw and run; pooled_statistics pools the pairs (same case, same draw, same run) of all of them. Its counts
(better, worse, failed, ...) count pairs; since every draw and run has the same test cases, its bootstrap interval
and Wilcoxon test use each test case's mean difference over the draws and runs (the case is the independent
unit; treating its draws and runs as independent cases would make the interval too narrow). repeat_summary gives
each trainer's mean, standard deviation (ddof 1) and range of its results' mean Dice, median Dice and failed cases
over the draws and runs; summary_cells puts both in the one table a benchmark is read from.
"""
import sys
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_ssl.evaluation.metrics import FAILED_DICE
from nnunet_ssl.utilities.inputs import UserError

CHANGE_DICE = 0.05  # a case counts as better / worse by more than this much Dice (5 points)
CHANGE_POINTS = f"{CHANGE_DICE * 100:g}"  # the same in Dice points, as the tables print it
N_RESAMPLES = 10000
CONFIDENCE = 0.95
DIFFERENCE_COLUMN = "mean difference (points)"
INTERVAL_COLUMN = f"{int(CONFIDENCE * 100)}% bootstrap CI"
STAT_KEYS = ("dataset", "evaluation", "draw", "run", "trainer", "reference", "paired", "n_cases", "n_units",
             "Dice_mean", "Dice_mean_reference", "mean_difference", "median_difference", "ci_low", "ci_high",
             "wilcoxon_p", "better", "worse", "better_larger", "better_smaller", "worse_larger", "worse_smaller",
             "failed", "failed_reference", "rescued", "newly_failed", "note")
POOLED = "all"  # the draw and run of the entries pooled over all draws and runs
REPEAT_METRICS = ("Dice_mean", "Dice_median", "failed_cases")


class StatisticsError(UserError):
    pass


def bootstrap_interval(values: np.ndarray, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = 0) -> tuple:
    """Percentile bootstrap interval of the mean of `values` (resampled in blocks: bounded memory)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means, block = [], max(1, 2 ** 22 // max(1, values.size))
    for start in range(0, n_resamples, block):
        n = min(block, n_resamples - start)
        means.append(values[rng.integers(0, values.size, (n, values.size))].mean(axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(means), [alpha, 1 - alpha])
    return float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences; 1.0 if all of them are 0."""
    from scipy.stats import wilcoxon

    differences = np.asarray(differences, dtype=float)
    if not np.any(differences != 0):
        return 1.0
    with warnings.catch_warnings():  # few non-zero differences: scipy warns about the normal approximation
        warnings.simplefilter("ignore")
        return float(wilcoxon(differences).pvalue)


def case_mismatch(dice: Mapping, reference: Mapping, what: str = "trainer",
                  reference_name: str = "reference") -> Optional[str]:
    """None if both have the same case ids, else what differs (counts and examples of each side)."""
    if set(dice) == set(reference):
        return None
    only, lacking = sorted(set(dice) - set(reference)), sorted(set(reference) - set(dice))
    return (f"{what} and {reference_name} were evaluated on different cases, so they cannot be paired: "
            f"{len(only)} only in {what} (e.g. {only[:3]}), {len(lacking)} only in {reference_name} "
            f"(e.g. {lacking[:3]})")


def paired_difference(dice: Mapping[str, float], reference: Mapping[str, float], n_resamples: int = N_RESAMPLES,
                      seed: int = 0, what: str = "trainer", reference_name: str = "reference",
                      unit=None, volumes: Optional[tuple] = None) -> dict:
    """Statistics of `dice` against `reference` (case id -> Dice, the same case ids); see the module text.
    `unit(case id)`: the independent unit of a case (default: the case itself); the bootstrap interval and the
    Wilcoxon test use each unit's mean difference. `volumes`: (case id -> predicted / true volume of the trainer,
    the same of the reference) for the better / worse split by size."""
    mismatch = case_mismatch(dice, reference, what, reference_name)
    if mismatch:
        raise StatisticsError(mismatch + "; compare predictions of the same cases (same test set, same folds)")
    if not dice:
        raise StatisticsError(f"{what}: no cases to compare")
    cases = sorted(dice)
    a = np.array([dice[c] for c in cases], dtype=float)
    r = np.array([reference[c] for c in cases], dtype=float)
    d = a - r
    units = d
    if unit is not None:
        groups: Dict = {}
        for c, value in zip(cases, d):
            groups.setdefault(unit(c), []).append(value)
        units = np.array([np.mean(v) for _, v in sorted(groups.items())])
    low, high = bootstrap_interval(units, n_resamples, seed=seed)
    counted = np.round(d, 9)  # 0.95 - 0.90 is 0.05000000000000004: not more than 5 points
    better, worse = counted > CHANGE_DICE, counted < -CHANGE_DICE
    by_size = {}
    if volumes is not None:
        mine, theirs = (np.array([v[c] for c in cases], dtype=float) for v in volumes)
        larger, smaller = mine > theirs, mine < theirs  # a NaN volume (empty reference) is neither
        by_size = {"better_larger": int(np.sum(better & larger)), "better_smaller": int(np.sum(better & smaller)),
                   "worse_larger": int(np.sum(worse & larger)), "worse_smaller": int(np.sum(worse & smaller))}
    return {"n_cases": len(cases), "n_units": int(units.size), "Dice_mean": float(a.mean()),
            "Dice_mean_reference": float(r.mean()), "mean_difference": float(d.mean()),
            "median_difference": float(np.median(d)), "ci_low": low, "ci_high": high,
            "wilcoxon_p": wilcoxon_p(units), "better": int(np.sum(better)), "worse": int(np.sum(worse)), **by_size,
            "failed": int(np.sum(a < FAILED_DICE)),
            "failed_reference": int(np.sum(r < FAILED_DICE)),
            "rescued": int(np.sum((r < FAILED_DICE) & (a >= FAILED_DICE))),
            "newly_failed": int(np.sum((a < FAILED_DICE) & (r >= FAILED_DICE)))}


def default_reference(trainers: Sequence[str]) -> str:
    """nnUNetTrainer if it is among `trainers`, else the first."""
    return "nnUNetTrainer" if "nnUNetTrainer" in trainers else trainers[0]


def _reference_of(scored: Sequence[dict], reference: Optional[str]) -> Optional[str]:
    trainers = list(dict.fromkeys(r["trainer"] for r in scored))
    if not trainers:
        return None
    if reference is None:
        return default_reference(trainers)
    if reference not in trainers:
        raise StatisticsError(f"reference trainer {reference!r} has no evaluated cases here; trainers with "
                              f"results: {', '.join(trainers)}")
    return reference


def paired_statistics(rows: Sequence[dict], reference: Optional[str] = None, n_resamples: int = N_RESAMPLES,
                      seed: int = 0, unpaired: str = "error") -> List[dict]:
    """One entry (STAT_KEYS) per trainer other than the reference, for each (dataset, evaluation, draw, run) that
    has the reference. `rows` are leaderboard rows; those with per-case Dice ("case_ids", "case_dice") are used.
    A trainer evaluated on other cases than the reference: a StatisticsError (unpaired="error"), or
    (unpaired="warn") an entry with paired False and the reason in "note", and a warning on stderr."""
    scored = [r for r in rows if "case_dice" in r]
    reference = _reference_of(scored, reference)
    groups: Dict[tuple, List[dict]] = {}
    for r in scored:
        groups.setdefault((r["dataset"], r["evaluation"], r.get("draw"), r.get("run")), []).append(r)
    result = []
    for (dataset, evaluation, draw, run), group in groups.items():
        references = [r for r in group if r["trainer"] == reference]
        if not references:
            continue
        ref_dice = _per_case(references[0])
        where = ", ".join([dataset, evaluation] + ([f"draw {draw}, run {run}"] if draw is not None else []))
        for r in group:
            if r["trainer"] == reference:
                continue
            entry = {"dataset": dataset, "evaluation": evaluation, "draw": draw, "run": run, "trainer": r["trainer"],
                     "reference": reference}
            dice, what = _per_case(r), f"{r['trainer']} ({where})"
            mismatch = case_mismatch(dice, ref_dice, what, reference)
            if mismatch and unpaired == "warn":
                print(f"warning: {mismatch}; this group is marked not paired (e.g. an unfinished cross-validation)",
                      file=sys.stderr)
                result.append({**entry, "paired": False, "n_cases": len(dice), "note": "not paired: " + mismatch})
                continue
            stats = paired_difference(dice, ref_dice, n_resamples, seed, what=what, reference_name=reference,
                                      volumes=_both_volumes(r, references[0]))
            result.append({**entry, "paired": True, **stats, "note": ""})
    return result


def pooled_statistics(rows: Sequence[dict], reference: Optional[str] = None, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> List[dict]:
    """Per trainer other than the reference and evaluation: the pairs (same case, same draw, same run) of all
    draws and runs of the rows that carry "draw" and "run" pooled (draw and run: POOLED); see the module text.
    Only (draw, run) with both trainers count; different case sets within one are an error."""
    scored = [r for r in rows if "case_dice" in r and r.get("draw") is not None]
    reference = _reference_of(scored, reference)
    references = {(r["evaluation"], r["draw"], r["run"]): r for r in scored if r["trainer"] == reference}
    pairs: Dict[tuple, List[tuple]] = {}  # (trainer, evaluation) -> [(its row, the reference's row)]
    for r in scored:
        key = (r["evaluation"], r["draw"], r["run"])
        if r["trainer"] != reference and key in references:
            pairs.setdefault((r["trainer"], r["evaluation"]), []).append((r, references[key]))
    result = []
    for (trainer, evaluation), group in pairs.items():
        # keyed (draw, run, case): the trainer's and the reference's Dice, and their volumes where both rows have them
        dice, ref_dice, volumes = {}, {}, ({}, {})
        for r, ref in group:
            mine, theirs = _per_case(r), _per_case(ref)
            mismatch = case_mismatch(mine, theirs, f"{trainer} (draw {r['draw']}, run {r['run']})", reference)
            if mismatch:
                raise StatisticsError(mismatch)
            where = (str(r["draw"]), str(r["run"]))
            for pooled, per_case in zip((dice, ref_dice), (mine, theirs)):
                pooled.update({(*where, c): v for c, v in per_case.items()})
            both = _both_volumes(r, ref)
            if both is None:  # one result without them (e.g. an old summary): no split by size for the pool
                volumes = None
            elif volumes is not None:
                for pooled, per_case in zip(volumes, both):
                    pooled.update({(*where, c): v for c, v in per_case.items()})
        n_groups = len(group)
        stats = paired_difference(dice, ref_dice, n_resamples, seed, what=trainer, reference_name=reference,
                                  unit=lambda key: key[2], volumes=volumes)
        result.append({"dataset": f"all draws ({n_groups} draw x run)", "evaluation": evaluation, "draw": POOLED,
                       "run": POOLED, "trainer": trainer, "reference": reference, "paired": True, **stats,
                       "note": "pooled: pairs of the same case in the same draw and run; interval and Wilcoxon "
                               "over the test cases' mean differences"})
    return result


def repeat_summary(rows: Sequence[dict]) -> List[dict]:
    """Per (trainer, evaluation) of the rows with results: over its draws and runs, the number of results, the
    draws, and each of REPEAT_METRICS' mean, std (ddof 1; 0 for one result), min and max; and the mean Dice and
    failed cases of each draw (mean over its runs)."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        if "Dice_mean" in r:
            groups.setdefault((r["trainer"], r["evaluation"]), []).append(r)
    result = []
    for (trainer, evaluation), group in groups.items():
        entry = {"trainer": trainer, "evaluation": evaluation, "n_results": len(group),
                 "draws": sorted({r.get("draw", 1) for r in group}),
                 "runs": sorted({r.get("run", 1) for r in group})}
        for m in REPEAT_METRICS:
            values = np.array([r[m] for r in group], dtype=float)
            entry.update({f"{m}_mean": float(values.mean()),
                          f"{m}_std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                          f"{m}_min": float(values.min()), f"{m}_max": float(values.max())})
        for m in ("Dice_mean", "failed_cases"):
            entry[f"{m}_per_draw"] = {str(d): float(np.mean([r[m] for r in group if r.get("draw", 1) == d]))
                                      for d in entry["draws"]}
        result.append(entry)
    return result


def repeat_cells(summary: Sequence[dict]):
    """(header, rows of cell strings) of the table over runs and draws."""
    header = ["trainer", "evaluation", "draws x runs", "mean Dice", "mean Dice min-max", "median Dice",
              "median Dice min-max", f"failed (< {FAILED_DICE})", "failed min-max", "mean Dice per draw",
              "failed per draw"]
    cells = []
    for s in summary:
        row = [s["trainer"], s["evaluation"], f"{len(s['draws'])} x {len(s['runs'])} ({s['n_results']} results)"]
        for m, digits, range_digits in (("Dice_mean", 4, 4), ("Dice_median", 4, 4), ("failed_cases", 1, 0)):
            row += [f"{s[m + '_mean']:.{digits}f} ± {s[m + '_std']:.{digits}f}",
                    f"{s[m + '_min']:.{range_digits}f} - {s[m + '_max']:.{range_digits}f}"]
        row += [" / ".join(f"{v:.4f}" for v in s["Dice_mean_per_draw"].values()),
                " / ".join(f"{v:g}" for v in s["failed_cases_per_draw"].values())]
        cells.append(row)
    return header, cells


REPEATS_NOTE = ("Over the draws (labeled cases drawn with different seeds; draw 1: the dataset as given) and the "
                "runs (independent trainings): mean ± standard deviation (ddof 1) and range of each result's mean "
                "Dice, median Dice and failed cases; per draw: the mean over its runs, draws in order 1, 2, ...")


def summary_cells(summary: Sequence[dict], statistics: Sequence[dict]):
    """(header, rows of cell strings) of the one table a benchmark with runs and draws is read from: per trainer of
    `summary` (repeat_summary), its results over the draws and runs, and against the reference (`statistics`:
    paired_statistics + pooled_statistics) the pooled paired difference, the pairs better / worse by more than
    CHANGE_DICE, its failed cases and the reference's in each draw (the runs both have, summed), and the pairs worse
    by more than CHANGE_DICE per 20: whether a gain rescues failures without damaging the good cases."""
    paired = [s for s in statistics if s.get("paired", True)]
    reference = paired[0]["reference"] if paired else "the reference"
    pooled = {(s["trainer"], s["evaluation"]): s for s in paired if s.get("draw") == POOLED}
    failed_by_draw: Dict[tuple, Dict[str, list]] = {}  # (trainer, evaluation) -> draw -> [failed, the reference's]
    for s in paired:
        if s.get("draw") not in (None, POOLED):
            counts = failed_by_draw.setdefault((s["trainer"], s["evaluation"]), {}).setdefault(str(s["draw"]), [0, 0])
            counts[0] += s["failed"]
            counts[1] += s["failed_reference"]
    header = ["trainer", "draws x runs", "mean Dice", "median Dice", "failed per draw",
              f"paired to {reference}, pooled (points, 95% CI, Wilcoxon p)",
              f"better / worse > {CHANGE_POINTS} (larger)", f"failed / {reference}'s, per draw",
              f"worse > {CHANGE_POINTS} per 20 pairs"]
    cells = []
    for r in summary:
        key = (r["trainer"], r["evaluation"])
        s = pooled.get(key)
        row = [r["trainer"], _grid(r),
               f"{r['Dice_mean_mean']:.4f} ± {r['Dice_mean_std']:.4f}", f"{r['Dice_median_mean']:.4f}",
               " / ".join(f"{v:g}" for v in r["failed_cases_per_draw"].values())]
        if s is None:
            cells.append(row + [""] * (len(header) - len(row)))
            continue
        larger = f" ({s['better_larger']} / {s['worse_larger']})" if "worse_larger" in s else ""
        failed = failed_by_draw.get(key, {})
        cells.append(row + [
            f"{100 * s['mean_difference']:+.2f} ({100 * s['ci_low']:+.2f} to {100 * s['ci_high']:+.2f}), "
            f"p = {_p(s['wilcoxon_p'])}",
            f"{s['better']} / {s['worse']}{larger}",
            ", ".join(f"{mine} / {theirs}" for mine, theirs in failed.values()),
            f"{20 * s['worse'] / s['n_cases']:.1f}"])
    return header, cells


SUMMARY_NOTE = (f"Results: mean ± std over the draws and runs of each result's mean Dice; median Dice: the mean of "
                f"the results' medians; failed (Dice < {FAILED_DICE}) per draw: the mean over its runs. Paired, "
                f"pooled: the per-case differences of every draw and run pooled (interval and Wilcoxon over each "
                f"test case's mean difference); better / worse: pairs more than {CHANGE_POINTS} points above "
                f"/ below the reference, (larger): of those, the pairs the trainer segments larger than the "
                f"reference; failed per draw: the trainer's and the reference's failed cases summed over the runs of "
                f"that draw both have.")


def _grid(summary: dict) -> str:
    """'draws x runs', with the count of results where some draw lacks a run (a resumable benchmark cut short)."""
    grid = f"{len(summary['draws'])} x {len(summary['runs'])}"
    expected = len(summary["draws"]) * len(summary["runs"])
    return grid if summary["n_results"] == expected else f"{grid} ({summary['n_results']} of {expected})"


def _per_case(row: dict) -> Dict[str, float]:
    ids = row["case_ids"]
    if len(set(ids)) != len(ids):
        raise StatisticsError(f"{row['trainer']} ({row['dataset']}, {row['evaluation']}): a case id occurs twice")
    return dict(zip(ids, row["case_dice"]))


def _both_volumes(row: dict, reference_row: dict) -> Optional[tuple]:
    """(case id -> predicted / true volume) of a row and of its reference row; None unless both carry them."""
    if "case_volume_ratio" not in row or "case_volume_ratio" not in reference_row:
        return None
    return tuple(dict(zip(r["case_ids"], r["case_volume_ratio"])) for r in (row, reference_row))


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def statistics_cells(stats: Sequence[dict]):
    """(header, rows of cell strings) of the paired-statistics table; differences in Dice points. Draw and run
    columns where entries have them; an entry that is not paired says so instead of numbers."""
    repeats = any(s.get("draw") is not None for s in stats)
    header = ["dataset", "evaluation"] + (["draw", "run"] if repeats else []) + [
        "trainer", "reference", "cases", "mean Dice", "reference mean Dice", DIFFERENCE_COLUMN, INTERVAL_COLUMN,
        "Wilcoxon p", f"better > {CHANGE_POINTS}", f"worse > {CHANGE_POINTS}",
        "better: larger / smaller", "worse: larger / smaller", f"failed (< {FAILED_DICE})", "failed reference",
        "rescued", "newly failed"]
    cells = []
    for s in stats:
        row = [s["dataset"], s["evaluation"]] + ([str(s.get("draw", "")), str(s.get("run", ""))] if repeats else []) \
            + [s["trainer"], s["reference"]]
        if not s.get("paired", True):
            cells.append(row + [str(s["n_cases"]), s["note"]] + [""] * (len(header) - len(row) - 2))
            continue
        units = s.get("n_units", s["n_cases"])
        cells.append(row + [str(s["n_cases"]) + (f" pairs ({units} cases)" if units != s["n_cases"] else ""),
                            f"{s['Dice_mean']:.4f}", f"{s['Dice_mean_reference']:.4f}",
                            f"{100 * s['mean_difference']:+.2f}",
                            f"[{100 * s['ci_low']:+.2f}, {100 * s['ci_high']:+.2f}]", _p(s["wilcoxon_p"]),
                            str(s["better"]), str(s["worse"]), _by_size(s, "better"), _by_size(s, "worse"),
                            str(s["failed"]), str(s["failed_reference"]),
                            str(s["rescued"]), str(s["newly_failed"])])
    return header, cells


def _by_size(entry: dict, which: str) -> str:
    if f"{which}_larger" not in entry:
        return "-"
    return f"{entry[which + '_larger']} / {entry[which + '_smaller']}"


STATISTICS_NOTE = (f"Paired per-case differences of test or cross-validation Dice (trainer minus reference, in Dice "
                   f"points), cases paired by id; {int(CONFIDENCE * 100)}% CI: percentile bootstrap of the mean "
                   f"difference ({N_RESAMPLES} resamples, seeded); Wilcoxon: two-sided signed-rank test; better / "
                   f"worse: cases more than {CHANGE_POINTS} points above / below the reference; larger / "
                   f"smaller: of those, the cases the trainer segments larger / smaller than the reference; rescued: "
                   f"failed (Dice < {FAILED_DICE}) by the reference, not by the trainer; newly failed: the reverse. "
                   f"Draw and run {POOLED}: the pairs of every draw and run pooled, interval and Wilcoxon over each test "
                   f"case's mean difference. Not paired: the two were evaluated on different cases.")

