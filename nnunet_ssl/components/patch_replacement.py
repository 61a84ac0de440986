"""Uncertainty-guided patch replacement (UCMT's UMIX, UAMT's "new image"): within each image, the most uncertain
patches are overwritten by the most confident ones, and the label moves with the pixels.

A grid of equal, non-overlapping patches of side size // divisions per axis (at least 1) covers each image from
its first voxel; when the size is not a multiple of the side, the remainder at the end of an axis (fewer voxels
than one side) belongs to no patch: it is never ranked, moved or overwritten. (UCMT's Fold/Unfold leaves it
zero.) Everything is one gather and one scatter over (batch, patch) indices: no Python loop over samples or
patches, which matters for 3D volumes on CPU.

Shapes: images and labels (B, C, *spatial) with any C (labels C = 1), uncertainty maps (B, *spatial).
"""
from dataclasses import dataclass
from math import prod
from typing import List, Sequence, Tuple

import torch


@dataclass(frozen=True)
class PatchGrid:
    side: Tuple[int, ...]  # voxels per patch, per axis
    counts: Tuple[int, ...]  # patches per axis

    @property
    def n_patches(self) -> int:
        return prod(self.counts)

    @property
    def covered(self) -> Tuple[int, ...]:
        return tuple(s * n for s, n in zip(self.side, self.counts))


def patch_grid(spatial_shape: Sequence[int], divisions: int) -> PatchGrid:
    """Patches of side max(1, size // divisions) per axis; size // side of them per axis."""
    if divisions < 1:
        raise ValueError(f"grid divisions must be >= 1, got {divisions}")
    side = tuple(max(1, s // divisions) for s in spatial_shape)
    return PatchGrid(side, tuple(s // d for s, d in zip(spatial_shape, side)))


def to_patches(x: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """(B, C, *spatial) -> (B, L, C * prod(side)): the covered region, one row per patch (row-major patch order)."""
    b, c, n = x.shape[0], x.shape[1], len(grid.side)
    x = x[(slice(None), slice(None)) + tuple(slice(0, e) for e in grid.covered)]
    x = x.reshape(b, c, *[v for pair in zip(grid.counts, grid.side) for v in pair])  # B C n0 s0 n1 s1 ...
    order = [0] + [2 + 2 * i for i in range(n)] + [1] + [3 + 2 * i for i in range(n)]  # B n0 n1 .. C s0 s1 ..
    return x.permute(order).reshape(b, grid.n_patches, -1)


def from_patches(patches: torch.Tensor, like: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """The inverse of to_patches: a copy of `like` whose covered region holds `patches`."""
    b, c, n = like.shape[0], like.shape[1], len(grid.side)
    x = patches.reshape(b, *grid.counts, c, *grid.side)
    order = [0, n + 1] + [v for i in range(n) for v in (1 + i, n + 2 + i)]  # B C n0 s0 n1 s1 ...
    out = like.clone()
    out[(slice(None), slice(None)) + tuple(slice(0, e) for e in grid.covered)] = \
        x.permute(order).reshape(b, c, *grid.covered)
    return out


def patch_means(u: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """(B, *spatial) map -> (B, L) mean per patch."""
    return to_patches(u.unsqueeze(1).float(), grid).mean(2)


def ranked(u: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """(B, L) patch indices per sample, most uncertain first (stable: equal means keep patch order)."""
    return torch.argsort(patch_means(u, grid), dim=1, descending=True, stable=True)


def _rows(index: torch.Tensor, width: int) -> torch.Tensor:
    """(B, K) patch indices -> (B, K, width), to gather or scatter whole patch rows."""
    return index.unsqueeze(2).expand(-1, -1, width)


@dataclass
class Replacement:
    """Which patches an uncertainty pair overwrites: two moves applied in order, each (B, K) destination and
    source patch indices, destination k receiving source k."""
    moves: List[Tuple[torch.Tensor, torch.Tensor]]
    grid: PatchGrid

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = to_patches(x, self.grid)
        for dst, src in self.moves:
            p = p.scatter(1, _rows(dst, p.shape[2]), p.gather(1, _rows(src, p.shape[2])))
        return from_patches(p, x, self.grid)

    def moved_fraction(self, spatial_shape: Sequence[int]) -> float:
        """Share of all voxels that a move overwrote with another patch's content."""
        b = self.moves[0][0].shape[0]
        moved = torch.zeros(b, self.grid.n_patches, dtype=torch.bool, device=self.moves[0][0].device)
        for dst, src in self.moves:
            moved.scatter_(1, dst, moved.gather(1, dst) | (dst != src))
        return moved.sum().item() * prod(self.grid.side) / (b * prod(spatial_shape))


def uncertainty_replacement(u_1: torch.Tensor, u_2: torch.Tensor, k: int, grid: PatchGrid) -> Replacement:
    """UCMT's top-K swap for the uncertainty maps of two heads (the same map twice for one head):
    the K most uncertain patches under u_1 receive the K most confident under u_2 (the most uncertain the most
    confident), then the K most uncertain under u_2 receive the K most confident under u_1, on the result of the
    first move. With u_1 == u_2 the second move would repeat the first, and it is left out."""
    if not 1 <= k <= grid.n_patches:
        raise ValueError(f"top-K patch replacement: K = {k} must be in 1..{grid.n_patches} (the grid's patches)")
    order_1, order_2 = ranked(u_1, grid), ranked(u_2, grid)
    moves = [(order_1[:, :k], order_2.flip(1)[:, :k])]
    if u_2 is not u_1:
        moves.append((order_2[:, :k], order_1.flip(1)[:, :k]))
    return Replacement(moves, grid)
