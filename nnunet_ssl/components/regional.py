"""SGRS-Net building blocks (Synergy-Guided Regional Supervision): region partition, regional losses (its mix-up,
an input perturbation, is nnunet_ssl.components.perturbations.mix_up).

Equation numbers refer to the paper. Shapes: probabilities (B, C, *spatial), labels and masks (B, *spatial)."""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nnunet_ssl.components.uncertainty import entropy

_MIN_PROB = 1e-8  # floor before log: a probability of 0 would give an infinite loss and NaN gradients


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Eq. 6 divided by log C, in [0, 1] for any number of classes (SGRS's disregard_rule "normalized_entropy";
    synergy_regions says why it is not the default).

    The clamp removes rounding above 1, so that tau = 1 keeps every voxel."""
    return (entropy(probs) / math.log(probs.shape[1])).clamp(max=1.0)


def entropy_threshold_for_probability(p: float) -> float:
    """Normalized binary entropy H(p) / ln 2: the tau under which a two-class voxel with max(p, 1 - p) is kept.

    The paper's tau = 0.296 is H(0.425) in base 10 (its code thresholds the probability at 0.425);
    H(0.425) / ln 2 = 0.9838, so with normalized entropy the default equals the paper's setting in the binary case."""
    return sum(-q * math.log(q) for q in (p, 1.0 - p) if q > 0) / math.log(2)


PAPER_TAU = entropy_threshold_for_probability(0.425)
# the same rule as a confidence: a two-class voxel's entropy exceeds H(0.425) exactly when max(p, 1 - p) < 0.575
PAPER_MIN_CONFIDENCE = 1.0 - 0.425


@dataclass
class SynergyRegions:
    """Eq. 7-9 partition of the pseudo label: each voxel lies in exactly one of the three (B, *spatial) masks."""
    disregarded: torch.Tensor  # Delta: uncertain in P_U or P_M, no loss
    consistent: torch.Tensor  # Omega: confident and same class, CE + Dice (eq. 13)
    inconsistent: torch.Tensor  # Theta: confident but classes differ, noise-robust losses (eq. 17)

    def fractions(self) -> dict:
        n = self.disregarded.numel()
        return {"delta": self.disregarded.sum().item() / n, "omega": self.consistent.sum().item() / n,
                "theta": self.inconsistent.sum().item() / n}


@torch.no_grad()
def synergy_regions(p_u: torch.Tensor, p_m: torch.Tensor, tau: float = None,
                    min_confidence: float = None) -> SynergyRegions:
    """Eq. 7-9 on the student's predictions for the unlabeled image (P_U) and its mix-up (P_M).

    A voxel is uncertain (Delta) in a prediction when its largest class probability is below `min_confidence`,
    or, given `tau` instead, when its normalized entropy exceeds tau; both are strict, so a voxel exactly at the
    threshold is kept. For two classes min_confidence = PAPER_MIN_CONFIDENCE and tau = PAPER_TAU are the same
    rule (the paper's). For many they part: dividing by log C lets tau fire only near the uniform distribution
    (a voxel split 50/50 between two of 14 organs has normalized entropy 0.26 and is kept), while the
    confidence rule disregards every voxel whose argmax is in doubt. Argmax ties go to the lowest class index
    (torch.argmax). No gradient: the regions select voxels, they are not differentiated."""
    if (tau is None) == (min_confidence is None):
        raise ValueError("synergy_regions needs exactly one of tau and min_confidence")
    if min_confidence is not None:
        delta = (p_u.amax(1) < min_confidence) | (p_m.amax(1) < min_confidence)
    else:
        delta = (normalized_entropy(p_u) > tau) | (normalized_entropy(p_m) > tau)
    same = p_u.argmax(1) == p_m.argmax(1)
    return SynergyRegions(disregarded=delta, consistent=same & ~delta, inconsistent=~same & ~delta)


def regional_cross_entropy(probs: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Eq. 10 (label_smoothing = 0) and eq. 15: -(1 - eps) log p[y] - eps / C sum_j log p_j per voxel.

    Summed over the region as the equations write it, divided by the number of voxels of the whole batch (a
    constant, as in the authors' code), so a region weighs with its size. Dividing by the region's own size
    instead gives each voxel of a small inconsistent region (Theta is 2-4 % of the voxels on PH2) a large
    weight. An empty region gives a zero that is still on the graph (zero gradient)."""
    log_p = probs.float().clamp(min=_MIN_PROB).log()
    nll = -log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    per_voxel = (1.0 - label_smoothing) * nll - label_smoothing * log_p.mean(1)
    return (per_voxel * region).sum() / region.numel()


def regional_dice_loss(probs: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
                       smooth_denominator: float = 0.0) -> torch.Tensor:
    """Eq. 11 (smooth_denominator = 0) and eq. 16 (eta): 1 - 2 sum p y / (sum p^2 + sum y^2 + eta).

    Sums run over the region voxels and all classes jointly, as the equations write them. An empty region gives
    no supervision: a graph-connected zero (eq. 11 would be 0/0 there, eq. 16 a constant 1)."""
    mask = region.unsqueeze(1)
    p = probs.float() * mask
    y = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).float() * mask
    denominator = (p * p).sum() + (y * y).sum() + smooth_denominator
    loss = 1.0 - 2.0 * (p * y).sum() / denominator.clamp(min=_MIN_PROB)
    return loss * region.any()


def regional_dice_loss_per_class(probs: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
                                 smooth: float = 1.0) -> torch.Tensor:
    """The SGRS authors' regional Dice (their SoftDiceLoss, batch_dice=False, background included):
    1 - mean_{b,c} (2 sum_R p y + s) / (sum_R p + sum_R y + s), linear sums over sample b's region voxels,
    s in numerator and denominator (1 on Omega, 20 on Theta in their code).

    Per sample and class, so the foreground is not drowned by background as in one joint Dice; the smoothing in
    both places makes a class that is absent from a tiny region cost about 0 instead of about 1. A sample with an
    empty region contributes 0 (graph-connected), an empty region in the whole batch gives 0."""
    mask = region.unsqueeze(1).float()
    p = probs.float() * mask
    y = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).float() * mask
    axes = tuple(range(2, p.dim()))
    dice = (2.0 * (p * y).sum(axes) + smooth) / (p.sum(axes) + y.sum(axes) + smooth)  # (B, C)
    present = region.flatten(1).any(1).float().unsqueeze(1)  # (B, 1): samples whose region has voxels
    return ((1.0 - dice) * present).mean()
