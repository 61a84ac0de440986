"""Exponential-moving-average teacher (Tarvainen & Valpola 2017)."""
import copy

import torch
from torch import nn


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


class EMATeacher(nn.Module):
    """theta'_t = a theta'_{t-1} + (1 - a) theta_t, updated after every optimizer step.

    The teacher is a frozen copy of the (unwrapped) student: it never receives gradients and stays in eval
    mode. Under DDP every rank holds the same student after each step (gradients are all-reduced), so every
    rank's teacher stays identical without communication."""

    def __init__(self, student: nn.Module, decay: float = 0.99):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(unwrap(student))
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True):
        # pseudo-targets always come from the eval-mode teacher (dropout off)
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        student = unwrap(student)
        for p_teacher, p_student in zip(self.module.parameters(), student.parameters()):
            p_teacher.lerp_(p_student.detach().to(p_teacher.dtype), 1.0 - self.decay)
        for b_teacher, b_student in zip(self.module.buffers(), student.buffers()):
            b_teacher.copy_(b_student)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.module.load_state_dict(state_dict, strict=strict)
