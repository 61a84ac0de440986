"""Shared pseudo-label helpers, on hand-computed label maps."""
import numpy as np
import pytest

from nnunet_ssl.components.pseudo_labels import (agreement, ensemble_agreement, keep_most_stable, keep_stable,
                                      splits_with_pseudo_labeled)


def test_agreement_is_mean_foreground_dice():
    a = np.zeros((4, 4), int)
    b = np.zeros((4, 4), int)
    a[0, :2] = 1  # label 1: 2 voxels in a, 4 in b, 2 shared -> Dice 4/6
    b[0, :4] = 1
    a[3, 3] = 2  # label 2: only in a -> Dice 0
    assert agreement(a, b, [1, 2]) == pytest.approx((4 / 6 + 0) / 2)
    assert agreement(a, a, [1, 2]) == 1.0
    # a label absent from both maps is left out (it would dilute the change of label 1)
    assert agreement(a, b, [1, 3]) == pytest.approx(4 / 6)
    assert agreement(np.zeros(3), np.zeros(3), [1, 2]) == 1.0  # both empty: the same prediction
    with pytest.raises(ValueError, match="shapes"):
        agreement(a, b[:3], [1])
    with pytest.raises(ValueError, match="no foreground"):
        agreement(a, b, [])


def test_ensemble_agreement_averages_members():
    ensemble = np.array([1, 1, 0, 0])
    same, half = np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])  # Dice 1 and 2/3
    assert ensemble_agreement(ensemble, [same, half], [1]) == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        ensemble_agreement(ensemble, [], [1])


def test_keep_stable_threshold_is_inclusive():
    kept, dropped = keep_stable({"c": 0.9, "a": 0.95, "b": 0.89}, 0.9)
    assert kept == ["a", "c"] and dropped == ["b"]
    assert keep_stable({"a": 0.0}, 0.0) == (["a"], [])
    with pytest.raises(ValueError):
        keep_stable({}, 1.5)


def test_keep_most_stable_keeps_the_best_share():
    scores = {"d": 0.2, "a": 0.9, "c": 0.5, "b": 0.9, "e": 0.7}
    assert keep_most_stable(scores, 0.4) == (["a", "b"], ["c", "d", "e"])
    assert keep_most_stable(scores, 0.5) == (["a", "b"], ["c", "d", "e"])  # round(2.5) = 2
    assert keep_most_stable({"b": 0.5, "a": 0.5}, 0.5) == (["a"], ["b"])  # a tie goes to the smaller id
    assert keep_most_stable({"a": 0.1}, 0.01) == (["a"], [])  # never an empty training set
    assert keep_most_stable(scores, 1.0) == (sorted(scores), [])
    with pytest.raises(ValueError):
        keep_most_stable(scores, 0.0)


def test_pseudo_labeled_cases_join_training_only():
    splits = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]
    out = splits_with_pseudo_labeled(splits, ["u2", "u1"])
    assert out == [{"train": ["a", "b", "u1", "u2"], "val": ["c"]}, {"train": ["a", "c", "u1", "u2"], "val": ["b"]}]
    assert splits[0]["train"] == ["a", "b"]  # the input is not modified
    with pytest.raises(ValueError, match="c"):
        splits_with_pseudo_labeled(splits, ["u1", "c"])  # a validation case cannot also be pseudo-labelled
