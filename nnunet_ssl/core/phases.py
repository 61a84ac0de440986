"""Multi-phase training (a pretraining stage, self-training rounds) within one nnU-Net training.

A trainer lists its phases (`nnUNetTrainerSSL.phases()`); each has a share of num_epochs and says what happens
at its start: fresh weights (nnU-Net's initialisation of new networks, and a new teacher) or the weights carried
over, and whether the optimizer restarts (no momentum, PolyLR from initial_lr over the phase, a new grad scaler).
The checkpoint stores the current phase, so `--c` resumes in any phase without redoing a phase start.
"""
from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Sequence

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler


@dataclass(frozen=True)
class Phase:
    name: str
    share: float  # of num_epochs
    fresh_weights: bool = False
    restart_optimizer: bool = True


def phase_starts(shares: Sequence[float], num_epochs: int) -> List[int]:
    """First epoch of each phase. The first phase gets round(share_0 * num_epochs) epochs; the other phases split
    the rest in proportion to their shares, each start rounded down (for equal shares: k * rest // n)."""
    first = round(shares[0] * num_epochs)
    rest, later = num_epochs - first, [Fraction(s) for s in shares[1:]]
    starts, done = [0], Fraction(0)
    for share in later:
        starts.append(first + int(done / sum(later) * rest))
        done += share
    return starts


def check_phase_starts(starts: List[int], num_epochs: int, phases: Sequence[Phase]) -> None:
    bounds = starts + [num_epochs]
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"{num_epochs} epochs cannot give each of the phases {[p.name for p in phases]} "
                         f"(shares {[p.share for p in phases]}) at least one epoch")


class PhasePolyLR(PolyLRScheduler):
    """nnU-Net's PolyLR restarted at each bound: lr = initial_lr (1 - (epoch - start) / (end - start))^0.9."""

    def __init__(self, optimizer, initial_lr: float, bounds: List[int]):
        self.bounds = bounds  # [0, first epoch of each restarting phase..., num_epochs]
        super().__init__(optimizer, initial_lr, bounds[-1])

    def step(self, current_step=None):
        epoch = current_step or 0  # None only for the initial step in __init__
        k = min(bisect_right(self.bounds, epoch), len(self.bounds) - 1) - 1
        self.max_steps = self.bounds[k + 1] - self.bounds[k]
        super().step(epoch - self.bounds[k])
