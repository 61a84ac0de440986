"""Voxel-wise uncertainty of class probabilities. Shapes: probabilities (B, C, *spatial), maps (B, *spatial)."""
import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_c p_c log p_c in nats, per voxel; xlogy makes 0 log 0 = 0. High means uncertain."""
    p = probs.float()
    return -torch.special.xlogy(p, p).sum(1)


def entropy_of_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) per voxel, for a loss that back-propagates: -sum_c softmax(z)_c log_softmax(z)_c. entropy() of
    the probabilities has a NaN gradient wherever a probability underflows to 0 (a confident voxel, a logit gap
    above ~100 in float32: d(p log p)/dp = -inf times softmax's factor p = 0); this form has gradient 0 there."""
    log_p = torch.log_softmax(logits.float(), 1)
    return -(log_p.exp() * log_p).sum(1)


def mixture_entropy(p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    """H(1/2 (p_a + p_b)): the entropy of the mean of two predictions (UCMT's and UAMT's uncertainty map of a
    teacher and a student). High where either is uncertain or where the two disagree."""
    return entropy(0.5 * (p_a.float() + p_b.float()))
