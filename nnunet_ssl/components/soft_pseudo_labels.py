"""Confidence-weighted soft pseudo labels from Monte-Carlo dropout (MIRA-U, Qamar 2025, Algorithm 2).

From M stochastic teacher passes on the weak view: mu and sigma, the mean and (unbiased) standard deviation of the
class probabilities per voxel and class (nnunet_ssl.core.teachers.mc_dropout_probabilities gives mu and sigma^2).

    sigma_i = max_c sigma_{i,c}           one uncertainty per voxel
    w_i     = exp(-sigma_i / kappa)       confidence, in (0, 1]
    m_i     = [sigma_i < tau_u]           voxels the teacher is sure enough about
    y~_i,c  = w_i mu_i,c  (c foreground), y~_i,0 = 1 - sum_{c >= 1} w_i mu_i,c  (background)

The paper is binary (one sigmoid): y~ = w mu. The multi-class form above is that one, exactly, for two softmax
classes: p_bg = 1 - p_fg in every pass, so sigma_bg = sigma_fg (the max is the paper's sigma), y~_fg = w mu_fg
and y~_bg = 1 - w mu_fg. For C > 2 it is the reading y~ = w mu + (1 - w) e_background: the confidence w scales
every foreground class, and the mass it takes goes to background. It is a distribution (non-negative, summing to
1) without renormalising. Renormalising w_c mu_c over the classes instead would, in the binary case, cancel w
altogether (w_bg = w_fg, so y~ = mu): the confidence would no longer reach the target. The price of the paper's
form is its bias: w < 1 always pushes an uncertain voxel's target toward background. The per-voxel sigma is the
largest over classes, so that a voxel is kept only if no class's probability fluctuates by tau_u or more.

`mean_target` (a variant) uses y~ = mu and keeps w only as the per-voxel loss weight.
"""
from dataclasses import dataclass

import torch


@dataclass
class SoftPseudoLabels:
    target: torch.Tensor  # y~ (B, C, *spatial), a distribution over classes per voxel
    confidence: torch.Tensor  # w (B, *spatial)
    mask: torch.Tensor  # m (B, *spatial), float 0/1
    sigma: torch.Tensor  # (B, *spatial), max over classes

    def kept_fraction(self) -> float:
        return float(self.mask.mean())


def voxel_uncertainty(sigma: torch.Tensor) -> torch.Tensor:
    """sigma_i = max_c sigma_{i,c}: (B, C, *spatial) -> (B, *spatial)."""
    return sigma.amax(1)


def confidence(sigma: torch.Tensor, kappa: float) -> torch.Tensor:
    """w = exp(-sigma / kappa)."""
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    return torch.exp(-sigma / kappa)


def confidence_scaled_target(mu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y~_c = w mu_c for the foreground classes (c >= 1), the rest of the mass to background (class 0)."""
    foreground = w.unsqueeze(1) * mu[:, 1:]
    return torch.cat([1.0 - foreground.sum(1, keepdim=True), foreground], 1)


def soft_pseudo_labels(mu: torch.Tensor, variance: torch.Tensor, kappa: float, tau: float = None,
                       mean_target: bool = False) -> SoftPseudoLabels:
    """y~, w and m from the MC mean and variance of softmax probabilities (B, C, *spatial). tau None: no mask
    (every voxel kept; the ablation without the uncertainty mask)."""
    if mu.shape[1] < 2:
        raise ValueError("soft pseudo labels need softmax probabilities with a background class (C >= 2)")
    sigma = voxel_uncertainty(variance.clamp(min=0).sqrt())
    w = confidence(sigma, kappa)
    mask = torch.ones_like(sigma) if tau is None else (sigma < tau).float()
    target = mu if mean_target else confidence_scaled_target(mu, w)
    return SoftPseudoLabels(target=target, confidence=w, mask=mask, sigma=sigma)
