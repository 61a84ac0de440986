"""Input perturbations for teacher/student views."""
import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """x + clip(N(0, std^2), -clip, clip), the teacher's view in Mean Teacher / UA-MT."""
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)


@dataclass(frozen=True)
class Photometric:
    """A photometric perturbation for a student's view (UCMT / UAMT: colour jitter and blur on the student's
    images only). Each transform hits each sample with probability p, with its own random strength. Strengths are
    relative to each sample's and channel's own intensity statistics, so one setting serves z-scored CT/MR and
    [0, 1] RGB inputs alike. The geometry is unchanged: a prediction on the view matches the original's voxels."""
    brightness: float = 0.25  # x + b std, b ~ U(-brightness, brightness)
    contrast: float = 0.25  # mean + f (x - mean), f ~ U(1 - contrast, 1 + contrast)
    gamma: Tuple[float, float] = (0.7, 1.5)  # on the sample's [min, max] range, as nnU-Net's gamma transform
    blur_sigma: Tuple[float, float] = (0.5, 1.5)  # Gaussian blur, sigma in voxels along every spatial axis
    noise_std: float = 0.1  # x + N(0, (noise_std std)^2)
    p: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"photometric perturbation probability p must be in [0, 1], got {self.p}")
        if not 0.0 < self.gamma[0] <= self.gamma[1] or not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"gamma and blur_sigma must be ranges (low <= high) of positive values: {self}")


def photometric(x: torch.Tensor, setting: Photometric) -> torch.Tensor:
    """`setting`'s brightness, contrast, gamma, blur and noise on (B, C, *spatial) images, per sample."""
    x = x.float()
    b, spatial = x.shape[0], tuple(range(2, x.dim()))
    shape = (b,) + (1,) * (x.dim() - 1)

    def hit() -> torch.Tensor:
        return (torch.rand(shape, device=x.device) < setting.p).float()

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(shape, device=x.device).uniform_(low, high)

    std = x.std(spatial, keepdim=True).clamp(min=1e-6)
    x = x + hit() * uniform(-setting.brightness, setting.brightness) * std
    mean = x.mean(spatial, keepdim=True)
    x = mean + (1.0 + hit() * (uniform(1.0 - setting.contrast, 1.0 + setting.contrast) - 1.0)) * (x - mean)
    low, high = x.amin(spatial, keepdim=True), x.amax(spatial, keepdim=True)
    extent = (high - low).clamp(min=1e-6)
    gamma = 1.0 + hit() * (uniform(*setting.gamma) - 1.0)
    x = low + extent * ((x - low) / extent).clamp(0.0, 1.0) ** gamma
    x = gaussian_blur(x, torch.where(hit().flatten() > 0, uniform(*setting.blur_sigma).flatten(), 0.0),
                      radius=math.ceil(3 * setting.blur_sigma[1]))
    return x + hit() * torch.randn_like(x) * setting.noise_std * std


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, *spatial) with one sigma per sample (sigma 0: unchanged), edges
    replicated; one grouped convolution per axis for the whole batch."""
    b, c = x.shape[:2]
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma.clamp(min=1e-3).to(x.dtype)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.dim() - 2]
    out = x.reshape(1, b * c, *x.shape[2:])
    for axis in range(x.dim() - 2):
        pad = [0, 0] * (x.dim() - 2)
        pad[2 * (x.dim() - 3 - axis):2 * (x.dim() - 3 - axis) + 2] = [radius, radius]  # F.pad counts from the end
        view = [b * c, 1] + [1] * (x.dim() - 2)
        view[2 + axis] = 2 * radius + 1
        out = conv(F.pad(out, pad, mode="replicate"), kernel.view(view), groups=b * c)
    return out.reshape(x.shape)


@dataclass(frozen=True)
class CutOut:
    """CutOut (DeVries & Taylor 2017) for a strong view: each sample, with probability p, gets 1..max_holes
    boxes (number uniform), each side uniform in [side * min_fraction, side * max_fraction] voxels along every
    spatial axis and placed inside the image, filled with the sample's channel means (0 for nnU-Net's z-scored
    inputs: no out-of-range values for a [0, 1]-scaled input either). The defaults are MIRA-U's code
    (CoarseDropout: 1-8 holes of 8-32 px at 256 px, p 0.5). The geometry is unchanged."""
    max_holes: int = 8
    max_fraction: float = 1 / 8
    min_fraction: float = 1 / 32
    p: float = 0.5

    def __post_init__(self):
        if self.max_holes < 1 or not 0.0 < self.min_fraction <= self.max_fraction <= 1.0 or not 0 <= self.p <= 1:
            raise ValueError(f"CutOut needs max_holes >= 1, 0 < min_fraction <= max_fraction <= 1, p in [0, 1]: {self}")


def cutout_mask(shape, setting: CutOut, device=None) -> torch.Tensor:
    """(B, 1, *spatial) float mask, 1 inside the holes."""
    b, spatial = shape[0], tuple(shape[2:])
    mask = torch.zeros((b, 1) + spatial, device=device)
    for i in range(b):
        if torch.rand(()) >= setting.p:
            continue
        for _ in range(int(torch.randint(1, setting.max_holes + 1, ()))):
            box = [slice(i, i + 1), slice(None)]
            for s in spatial:
                low, high = max(1, round(s * setting.min_fraction)), max(1, int(s * setting.max_fraction))
                extent = int(torch.randint(low, max(low, high) + 1, ()))
                start = int(torch.randint(0, s - extent + 1, ()))
                box.append(slice(start, start + extent))
            mask[tuple(box)] = 1.0
    return mask


def fill_with_channel_means(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with the voxels where mask is 1 replaced by each sample's channel means (over the whole image)."""
    means = x.mean(tuple(range(2, x.dim())), keepdim=True)
    return torch.where(mask.bool(), means.expand_as(x), x)


def cutout(x: torch.Tensor, setting: CutOut) -> torch.Tensor:
    return fill_with_channel_means(x, cutout_mask(x.shape, setting, x.device))


def mix_up(x_u: torch.Tensor, x_l: torch.Tensor, alpha: float,
           rng: np.random.Generator = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SGRS eq. 3-4: x_m = lam x_u + (1 - lam) x_l, lam = max(b, 1 - b), b ~ Beta(alpha, alpha), one lam per sample.

    lam >= 0.5 keeps x_u dominant, which is why the pseudo label of x_u is used for x_m. Unlabeled sample i is
    mixed with labeled sample i % B_l. rng=None draws from numpy's global state (seeded by np.random.seed)."""
    b = (np.random if rng is None else rng).beta(alpha, alpha, size=x_u.shape[0])
    lam = torch.as_tensor(np.maximum(b, 1.0 - b), dtype=x_u.dtype, device=x_u.device)
    partner = x_l[torch.arange(x_u.shape[0], device=x_l.device) % x_l.shape[0]]
    w = lam.view(-1, *([1] * (x_u.dim() - 1)))
    return w * x_u + (1.0 - w) * partner, lam
