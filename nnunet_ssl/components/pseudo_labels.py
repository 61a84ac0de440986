"""Pseudo-labelled cases, shared by `nnUNetTrainerSelfTraining` and `nnunet_ssl self-train`: how well two
segmentations of a case agree, which cases are stable enough to keep, and cross-validation splits that put
pseudo-labelled cases in training only.

FLARE22's winning self-training solutions dropped unlabeled cases whose pseudo labels were unstable (changed too
much between rounds, or disagreed across the models of an ensemble). Stability here is the mean foreground Dice
between two segmentations of the same case. ST++ (Yang et al., CVPR 2022) ranks unlabeled images by the same kind
of stability, measured across the checkpoints of one training, and keeps the most stable share.
"""
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np


def agreement(a: np.ndarray, b: np.ndarray, labels: Iterable[int]) -> float:
    """Mean Dice of two label maps of one case over those of `labels` (the foreground labels) present in
    either map; 1 when neither map has any of them (two empty predictions are the same prediction). A label
    absent from both is left out rather than counted as agreeing, which would hide a change of the others."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"segmentations of different shapes: {a.shape} vs {b.shape}")
    labels = list(labels)
    if not labels:
        raise ValueError("no foreground labels to compare")
    dices = []
    for label in labels:
        in_a, in_b = a == label, b == label
        total = int(in_a.sum()) + int(in_b.sum())
        if total:
            dices.append(2.0 * int(np.logical_and(in_a, in_b).sum()) / total)
    return float(np.mean(dices)) if dices else 1.0


def volume_ratio(prediction: np.ndarray, truth: np.ndarray, labels: Iterable[int]) -> float:
    """Predicted / true volume of one case, the mean over those of `labels` present in the truth (below 1:
    under-segmented); NaN when the truth has none of them."""
    ratios = [int((prediction == label).sum()) / int((truth == label).sum()) for label in labels
              if (truth == label).any()]
    return float(np.mean(ratios)) if ratios else float("nan")


def ensemble_agreement(ensemble: np.ndarray, members: Sequence[np.ndarray], labels: Iterable[int]) -> float:
    """How much the ensemble's members agree with the ensemble's own segmentation: the mean of their
    agreements. 1 when every member predicts what the ensemble predicts."""
    labels = list(labels)
    if not members:
        raise ValueError("an ensemble agreement needs at least one member segmentation")
    return float(np.mean([agreement(ensemble, m, labels) for m in members]))


def keep_stable(scores: Dict[str, float], min_agreement: float) -> Tuple[List[str], List[str]]:
    """(kept, dropped) case ids: kept where the agreement score is >= min_agreement."""
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
    kept = sorted(k for k, s in scores.items() if s >= min_agreement)
    dropped = sorted(k for k, s in scores.items() if s < min_agreement)
    return kept, dropped


def keep_most_stable(scores: Dict[str, float], fraction: float) -> Tuple[List[str], List[str]]:
    """(kept, dropped) case ids: kept are the round(fraction * n) best scores (at least one; ties broken by id),
    as ST++ keeps the most reliable share of the unlabeled images rather than those above a threshold."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ranked = sorted(scores, key=lambda case: (-scores[case], case))
    n_kept = max(1, round(fraction * len(ranked))) if ranked else 0
    return sorted(ranked[:n_kept]), sorted(ranked[n_kept:])


def splits_with_pseudo_labeled(splits: List[dict], pseudo_labeled: Iterable[str]) -> List[dict]:
    """Every fold keeps its real validation cases; pseudo-labelled cases join every fold's training set only,
    so a fold's validation scores compare with those of a model trained without them."""
    pseudo_labeled = sorted(pseudo_labeled)
    clash = sorted(set(pseudo_labeled) & {c for fold in splits for c in fold["train"] + fold["val"]})
    if clash:
        raise ValueError(f"pseudo-labelled case ids are also labeled cases of the split: {clash[:5]}")
    return [{"train": list(fold["train"]) + pseudo_labeled, "val": list(fold["val"])} for fold in splits]
