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
- failed, failed_reference: cases with Dice < FAILED_DICE of the trainer and of the reference; rescued: cases
  the reference failed and the trainer did not; newly_failed: the other way round.
Cases are paired by case id (the file name); two trainers with different case sets are an error, not a
comparison of whatever overlaps.
"""
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_ssl.evaluation.metrics import FAILED_DICE
from nnunet_ssl.utilities.inputs import UserError

CHANGE_DICE = 0.05  # a case counts as better / worse by more than this much Dice (5 points)
N_RESAMPLES = 10000
CONFIDENCE = 0.95
DIFFERENCE_COLUMN = "mean difference (points)"
INTERVAL_COLUMN = f"{int(CONFIDENCE * 100)}% bootstrap CI"
STAT_KEYS = ("dataset", "evaluation", "trainer", "reference", "n_cases", "Dice_mean", "Dice_mean_reference",
             "mean_difference", "median_difference", "ci_low", "ci_high", "wilcoxon_p", "better", "worse",
             "failed", "failed_reference", "rescued", "newly_failed")


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


def paired_difference(dice: Mapping[str, float], reference: Mapping[str, float], n_resamples: int = N_RESAMPLES,
                      seed: int = 0, what: str = "trainer", reference_name: str = "reference") -> dict:
    """Statistics of `dice` against `reference` (case id -> Dice, the same case ids); see the module text."""
    if set(dice) != set(reference):
        only = sorted(set(dice) - set(reference))
        lacking = sorted(set(reference) - set(dice))
        raise StatisticsError(
            f"{what} and {reference_name} were evaluated on different cases, so they cannot be paired: "
            f"{len(only)} only in {what} (e.g. {only[:3]}), {len(lacking)} only in {reference_name} "
            f"(e.g. {lacking[:3]}); compare predictions of the same cases (same test set, same folds)")
    if not dice:
        raise StatisticsError(f"{what}: no cases to compare")
    cases = sorted(dice)
    a = np.array([dice[c] for c in cases], dtype=float)
    r = np.array([reference[c] for c in cases], dtype=float)
    d = a - r
    low, high = bootstrap_interval(d, n_resamples, seed=seed)
    counted = np.round(d, 9)  # 0.95 - 0.90 is 0.05000000000000004: not more than 5 points
    return {"n_cases": len(cases), "Dice_mean": float(a.mean()), "Dice_mean_reference": float(r.mean()),
            "mean_difference": float(d.mean()), "median_difference": float(np.median(d)), "ci_low": low,
            "ci_high": high, "wilcoxon_p": wilcoxon_p(d), "better": int(np.sum(counted > CHANGE_DICE)),
            "worse": int(np.sum(counted < -CHANGE_DICE)), "failed": int(np.sum(a < FAILED_DICE)),
            "failed_reference": int(np.sum(r < FAILED_DICE)),
            "rescued": int(np.sum((r < FAILED_DICE) & (a >= FAILED_DICE))),
            "newly_failed": int(np.sum((a < FAILED_DICE) & (r >= FAILED_DICE)))}


def default_reference(trainers: Sequence[str]) -> str:
    """nnUNetTrainer if it is among `trainers`, else the first."""
    return "nnUNetTrainer" if "nnUNetTrainer" in trainers else trainers[0]


def paired_statistics(rows: Sequence[dict], reference: Optional[str] = None, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> List[dict]:
    """One entry (STAT_KEYS) per trainer other than the reference, for each (dataset, evaluation) that has the
    reference. `rows` are leaderboard rows; those with per-case Dice ("case_ids", "case_dice") are used."""
    scored = [r for r in rows if "case_dice" in r]
    trainers = list(dict.fromkeys(r["trainer"] for r in scored))
    if not trainers:
        return []
    if reference is None:
        reference = default_reference(trainers)
    elif reference not in trainers:
        raise StatisticsError(f"reference trainer {reference!r} has no evaluated cases here; trainers with "
                              f"results: {', '.join(trainers)}")
    groups: Dict[tuple, List[dict]] = {}
    for r in scored:
        groups.setdefault((r["dataset"], r["evaluation"]), []).append(r)
    result = []
    for (dataset, evaluation), group in groups.items():
        references = [r for r in group if r["trainer"] == reference]
        if not references:
            continue
        ref_dice = _per_case(references[0])
        for r in group:
            if r["trainer"] == reference:
                continue
            stats = paired_difference(_per_case(r), ref_dice, n_resamples, seed,
                                      what=f"{r['trainer']} ({dataset}, {evaluation})", reference_name=reference)
            result.append({"dataset": dataset, "evaluation": evaluation, "trainer": r["trainer"],
                           "reference": reference, **stats})
    return result


def _per_case(row: dict) -> Dict[str, float]:
    ids = row["case_ids"]
    if len(set(ids)) != len(ids):
        raise StatisticsError(f"{row['trainer']} ({row['dataset']}, {row['evaluation']}): a case id occurs twice")
    return dict(zip(ids, row["case_dice"]))


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def statistics_cells(stats: Sequence[dict]):
    """(header, rows of cell strings) of the paired-statistics table; differences in Dice points."""
    header = ["dataset", "evaluation", "trainer", "reference", "cases", "mean Dice", "reference mean Dice",
              DIFFERENCE_COLUMN, INTERVAL_COLUMN, "Wilcoxon p",
              f"better > {CHANGE_DICE * 100:g}", f"worse > {CHANGE_DICE * 100:g}", f"failed (< {FAILED_DICE})",
              "failed reference", "rescued", "newly failed"]
    cells = [[s["dataset"], s["evaluation"], s["trainer"], s["reference"], str(s["n_cases"]), f"{s['Dice_mean']:.4f}",
              f"{s['Dice_mean_reference']:.4f}", f"{100 * s['mean_difference']:+.2f}",
              f"[{100 * s['ci_low']:+.2f}, {100 * s['ci_high']:+.2f}]", _p(s["wilcoxon_p"]), str(s["better"]),
              str(s["worse"]), str(s["failed"]), str(s["failed_reference"]), str(s["rescued"]),
              str(s["newly_failed"])] for s in stats]
    return header, cells


STATISTICS_NOTE = (f"Paired per-case differences of test or cross-validation Dice (trainer minus reference, in Dice "
                   f"points), cases paired by id; {int(CONFIDENCE * 100)}% CI: percentile bootstrap of the mean "
                   f"difference ({N_RESAMPLES} resamples, seeded); Wilcoxon: two-sided signed-rank test; better / "
                   f"worse: cases more than {CHANGE_DICE * 100:g} points above / below the reference; rescued: "
                   f"failed (Dice < {FAILED_DICE}) by the reference, not by the trainer; newly failed: the reverse.")

