"""Voxel-wise uncertainty of class probabilities. Shapes: probabilities (B, C, *spatial), maps (B, *spatial)."""
import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_c p_c log p_c in nats, per voxel; xlogy makes 0 log 0 = 0. High means uncertain."""
    p = probs.float()
    return -torch.special.xlogy(p, p).sum(1)


def mixture_entropy(p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    """H(1/2 (p_a + p_b)): the entropy of the mean of two predictions (UCMT's and UAMT's uncertainty map of a
    teacher and a student). High where either is uncertain or where the two disagree."""
    return entropy(0.5 * (p_a.float() + p_b.float()))
