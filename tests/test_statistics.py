"""Paired statistics of two trainers' per-case Dice against hand-computed values and scipy."""
import numpy as np
import pytest

from nnunet_ssl.evaluation.statistics import (StatisticsError, bootstrap_interval, paired_difference,
                                              paired_statistics, pooled_statistics, statistics_cells)


def _cases(values):
    return {f"case{i:02d}.png": float(v) for i, v in enumerate(values)}


def test_paired_difference_against_hand_computed_values():
    reference = _cases([0.90, 0.90, 0.50, 0.70, 0.85])
    trainer = _cases([0.96, 0.78, 0.85, 0.75, 1.00])  # d = +.06 -.12 +.35 +.05 +.15
    s = paired_difference(trainer, reference, n_resamples=2000)
    d = np.array([0.06, -0.12, 0.35, 0.05, 0.15])
    assert s["n_cases"] == 5 and s["mean_difference"] == pytest.approx(d.mean())
    assert s["median_difference"] == pytest.approx(np.median(d))
    assert (s["better"], s["worse"]) == (3, 1)  # +0.05 (0.75 - 0.70 in floating point) is not more than 5 points
    assert (s["failed"], s["failed_reference"], s["rescued"], s["newly_failed"]) == (2, 2, 1, 1)
    # ranks of |d|: 2 3 5 1 4, W- = 3; exact two-sided p = 2 P(W- <= 3) = 2 * 5/32 (sign patterns whose negative
    # ranks sum to at most 3: {}, {1}, {2}, {3}, {1, 2})
    assert s["wilcoxon_p"] == pytest.approx(2 * 5 / 32)
    assert s["ci_low"] < s["mean_difference"] < s["ci_high"]


def test_wilcoxon_p_of_a_consistent_gain_and_no_crash_without_differences():
    reference = _cases([0.7, 0.8, 0.6, 0.9, 0.75])
    gain = paired_difference(_cases([0.8, 0.85, 0.7, 0.95, 0.8]), reference)
    assert gain["wilcoxon_p"] == pytest.approx(2 / 32)  # all 5 positive: exact two-sided p = 2 / 2^5
    assert gain["ci_low"] > 0
    same = paired_difference(reference, reference)
    assert same["wilcoxon_p"] == 1.0 and same["mean_difference"] == 0
    assert (same["ci_low"], same["ci_high"]) == (0.0, 0.0) and (same["better"], same["worse"]) == (0, 0)


def test_bootstrap_interval_is_seeded_and_agrees_with_scipy():
    from scipy.stats import bootstrap

    d = np.random.default_rng(3).normal(0.02, 0.1, 40)
    ours = bootstrap_interval(d, 10000, seed=1)
    assert ours == bootstrap_interval(d, 10000, seed=1) and ours != bootstrap_interval(d, 10000, seed=2)
    theirs = bootstrap((d,), np.mean, n_resamples=10000, method="percentile", random_state=0).confidence_interval
    se = d.std() / np.sqrt(d.size)
    assert ours[0] == pytest.approx(theirs.low, abs=0.1 * se) and ours[1] == pytest.approx(theirs.high, abs=0.1 * se)
    assert ours[1] - ours[0] == pytest.approx(2 * 1.96 * se, rel=0.15)  # about the normal interval


def test_cases_are_paired_by_id_and_different_case_sets_are_an_error():
    reference = _cases([0.9, 0.5, 0.7])
    shuffled = dict(reversed(list(_cases([0.9, 0.6, 0.7]).items())))
    assert paired_difference(shuffled, reference)["mean_difference"] == pytest.approx(0.1 / 3)
    other = {**_cases([0.9, 0.6]), "elsewhere.png": 0.7}
    with pytest.raises(StatisticsError, match=r"different cases.*elsewhere\.png.*case02\.png"):
        paired_difference(other, reference, what="SGRS", reference_name="nnUNetTrainer")


def _row(trainer, dice, evaluation="test (fold all)", dataset="Dataset1_X"):
    cases = _cases(dice)
    return {"trainer": trainer, "dataset": dataset, "evaluation": evaluation, "case_ids": list(cases),
            "case_dice": list(cases.values())}


def test_paired_statistics_reference_choice_and_groups():
    rows = [_row("A", [0.8, 0.8]), _row("nnUNetTrainer", [0.7, 0.9]), _row("B", [0.9, 0.9]),
            _row("nnUNetTrainer", [0.5, 0.5], evaluation="cross-validation"), _row("A", [0.6, 0.6], "cross-validation"),
            _row("B", [0.1, 0.1], evaluation="test (fold 0)"),  # no reference of fold 0: no comparison
            {"trainer": "C", "dataset": "Dataset1_X", "evaluation": "missing"}]  # no results: ignored
    stats = paired_statistics(rows, n_resamples=100)
    assert [(s["trainer"], s["evaluation"], s["reference"]) for s in stats] == \
        [("A", "test (fold all)", "nnUNetTrainer"), ("B", "test (fold all)", "nnUNetTrainer"),
         ("A", "cross-validation", "nnUNetTrainer")]
    assert [round(s["mean_difference"], 6) for s in stats] == [0.0, 0.1, 0.1]
    assert [s["trainer"] for s in paired_statistics(rows[2:3] + rows[:1], n_resamples=100)] == ["A"]  # first: B
    assert [s["trainer"] for s in paired_statistics(rows, reference="A", n_resamples=100)][:2] == \
        ["nnUNetTrainer", "B"]
    with pytest.raises(StatisticsError, match="reference trainer 'Z'"):
        paired_statistics(rows, reference="Z")


def test_better_and_worse_cases_split_by_whether_the_trainer_segments_larger_or_smaller():
    reference = _cases([0.90, 0.90, 0.60, 0.70, 0.85, 0.80])
    trainer = _cases([0.80, 0.70, 0.80, 0.90, 0.85, 0.70])  # worse, worse, better, better, same, worse
    volume = _cases([1.4, 0.5, 1.0, 0.9, 2.0, float("nan")])  # predicted / true volume
    volume_reference = _cases([1.1, 0.8, 0.7, 1.0, 1.0, 1.0])
    s = paired_difference(trainer, reference, n_resamples=100, volumes=(volume, volume_reference))
    assert (s["better"], s["worse"]) == (2, 3)
    assert (s["better_larger"], s["better_smaller"]) == (1, 1)
    assert (s["worse_larger"], s["worse_smaller"]) == (1, 1)  # the NaN volume (no reference lesion) is neither
    assert "worse_larger" not in paired_difference(trainer, reference, n_resamples=100)  # no volumes: no split

    def row(name, dice, ratios, draw):
        return {**_row(name, dice), "draw": draw, "run": 1, "case_volume_ratio": ratios}
    rows = [row("nnUNetTrainer", [0.9, 0.6], [1.0, 1.0], 1), row("B", [0.8, 0.7], [1.5, 1.2], 1),
            row("nnUNetTrainer", [0.9, 0.6], [1.0, 1.0], 2), row("B", [0.7, 0.7], [0.6, 1.2], 2)]
    [pooled] = pooled_statistics(rows, n_resamples=100)
    assert (pooled["worse"], pooled["worse_larger"], pooled["worse_smaller"]) == (2, 1, 1)
    assert (pooled["better"], pooled["better_larger"], pooled["better_smaller"]) == (2, 2, 0)
    header, cells = statistics_cells([pooled])
    assert cells[0][header.index("worse: larger / smaller")] == "1 / 1"
    del rows[3]["case_volume_ratio"]  # one result without volumes (an old summary): no split for the pool
    [pooled] = pooled_statistics(rows, n_resamples=100)
    assert "worse_larger" not in pooled
    assert statistics_cells([pooled])[1][0][header.index("worse: larger / smaller")] == "-"
    per = paired_statistics(rows, n_resamples=100)
    assert per[0]["worse_larger"] == 1 and "worse_larger" not in per[1]
