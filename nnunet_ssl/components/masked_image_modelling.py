"""Masked image modelling (MAE, He et al. 2022; MIRA-U's stage 1): hide a share of the image's patches, reconstruct
them, L1 on the hidden patches only.

    M      = a random set of round(ratio * n) of the n grid patches (8 x 8 in 2D, 8 x 8 x 8 in 3D), per image
    I_mask = I with the voxels of M set to the image's channel means over its visible voxels
    L_MIM  = sum_{v in M} |I^_v - I_v| / (|M voxels| * channels)

Hidden voxels get the image's own (visible) channel means rather than 0: that is 0 for nnU-Net's z-scored inputs and an
in-range value for inputs scaled to [0, 1], so the network never sees an intensity the images do not have. A
patch size not divisible by the patch side gets a partial patch at the far edge, masked or kept as a whole.
"""
import math
from typing import Sequence

import torch



def patch_mask(shape: Sequence[int], patch: Sequence[int], ratio: float, device=None) -> torch.Tensor:
    """(B, 1, *spatial) float mask, 1 on the hidden patches: exactly round(ratio * n) of each image's n grid
    patches (ranks of uniform noise, as MAE draws them)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    b, spatial = shape[0], tuple(shape[2:])
    if len(patch) != len(spatial):
        raise ValueError(f"patch {tuple(patch)} does not match the spatial shape {spatial}")
    counts = [math.ceil(s / p) for s, p in zip(spatial, patch)]
    n = math.prod(counts)
    hidden = max(1, round(ratio * n))
    ranks = torch.rand(b, n, device=device).argsort(1).argsort(1)
    grid = (ranks < hidden).float().view(b, 1, *counts)
    for axis, p in enumerate(patch):
        grid = grid.repeat_interleave(p, dim=2 + axis)
    return grid[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)].contiguous()


def mask_patches(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """I_mask: the hidden voxels set to each image's channel means over its visible voxels (a mean over the whole
    image would tell the network a little about what is hidden)."""
    visible = 1.0 - mask
    spatial = tuple(range(2, x.dim()))
    means = (x * visible).sum(spatial, keepdim=True) / visible.sum(spatial, keepdim=True).clamp(min=1.0)
    return torch.where(mask.bool(), means.expand_as(x), x)


def masked_l1(reconstruction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |I^ - I| over the hidden voxels and all channels; unmasked voxels contribute nothing (nor gradient)."""
    if image.requires_grad:
        raise ValueError("the image is the target: it must not require grad")
    error = (reconstruction.float() - image.float()).abs() * mask
    return error.sum() / (mask.sum() * image.shape[1]).clamp(min=1.0)
