"""Teachers: the exponential-moving-average teacher (Tarvainen & Valpola 2017) and MC-dropout passes."""
import copy
from contextlib import contextmanager
from typing import Tuple

import torch
from torch import nn

from nnunet_ssl.architectures.common import unwrap
from nnunet_ssl.architectures.dropout import dropout_layers


class EMATeacher(nn.Module):
    """theta'_t = a_t theta'_{t-1} + (1 - a_t) theta_t, updated after every optimizer step.

    a_t = decay, or with `warm_start` min(1 - 1/(t+1), decay) (the UA-MT / SSL4MIS / SGRS reference code: the
    teacher follows the student closely while both are young). Parameters are paired by name, with a strict
    check that teacher and student have the same names and shapes: a teacher of another architecture is an error,
    never a silent pairing by position. Buffers (BatchNorm running statistics; nnU-Net's InstanceNorm networks
    have none, the plugin's multi-output networks have their `output_mix`) are copied from the student, since they
    are statistics of the data rather than weights, except with decay 1: a frozen teacher changes in nothing.

    The teacher never receives gradients and stays in eval mode (MC-dropout passes switch dropout on explicitly,
    `mc_dropout_probabilities`). Under DDP every rank holds the same student after each step (gradients are
    all-reduced), so every rank's teacher stays identical without communication."""

    def __init__(self, student: nn.Module, decay: float = 0.99, warm_start: bool = False):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.warm_start = decay, warm_start
        self.module = copy.deepcopy(unwrap(student))
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # targets always come from the eval-mode teacher

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def decay_at(self, step: int) -> float:
        """a_t for the update after optimizer step `step` (0-based)."""
        return min(1.0 - 1.0 / (step + 1), self.decay) if self.warm_start else self.decay

    @torch.no_grad()
    def update(self, student: nn.Module, step: int = None) -> None:
        if self.warm_start and step is None:
            raise ValueError("an EMA teacher with warm start needs the step of each update")
        decay = self.decay_at(step) if step is not None else self.decay
        if decay == 1.0:
            return
        student = unwrap(student)
        for p_teacher, p_student in _paired(self.module.named_parameters(), student.named_parameters(),
                                            "parameters"):
            p_teacher.lerp_(p_student.detach().to(p_teacher.dtype), 1.0 - decay)
        for b_teacher, b_student in _paired(self.module.named_buffers(), student.named_buffers(), "buffers"):
            b_teacher.copy_(b_student)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.module.load_state_dict(state_dict, strict=strict)


def _paired(teacher_items, student_items, kind: str) -> list:
    """(teacher tensor, student tensor) pairs by name; an error names what differs."""
    teacher, student = dict(teacher_items), dict(student_items)
    if teacher.keys() != student.keys():
        missing, extra = sorted(student.keys() - teacher.keys()), sorted(teacher.keys() - student.keys())
        raise ValueError(f"EMA teacher and student {kind} differ by name: student only {missing[:5]}, "
                         f"teacher only {extra[:5]}")
    pairs = {name: (teacher[name], student[name]) for name in teacher}
    bad = [name for name, (t, s) in pairs.items() if t.shape != s.shape]
    if bad:
        raise ValueError(f"EMA teacher and student {kind} differ in shape: {bad[:5]}")
    return list(pairs.values())


@contextmanager
def dropout_only(module: nn.Module):
    """Dropout layers in training mode, everything else in eval mode (normalisation statistics, ...); the
    previous modes are restored afterwards."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    for layer in dropout_layers(module):
        layer.train()
    try:
        yield module
    finally:
        for m, mode in modes.items():
            m.training = mode


@torch.no_grad()
def mc_dropout_probabilities(module: nn.Module, x: torch.Tensor, passes: int, probabilities,
                             chunk_size: int = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over `passes` stochastic dropout passes of probabilities(module(x)).

    The passes run as one forward of passes * B samples (each copy draws its own dropout masks); only when that
    does not fit into GPU memory (or `chunk_size` asks) in chunks of at most chunk_size samples, halving on each
    out-of-memory error. `probabilities` maps the network output to (N, C, ...) probabilities."""
    if passes < 2:
        raise ValueError(f"MC dropout needs at least 2 passes, got {passes}")
    if not dropout_layers(module):
        raise ValueError(f"{type(module).__name__} has no dropout layers: MC-dropout passes would all be equal")
    b = x.shape[0]
    stacked = x.repeat(passes, *([1] * (x.dim() - 1)))  # pass m is rows m*B .. (m+1)*B-1
    chunk = chunk_size or stacked.shape[0]
    with dropout_only(module):
        while True:
            try:
                probs = torch.cat([probabilities(module(stacked[i:i + chunk])).float()
                                   for i in range(0, stacked.shape[0], chunk)])
                break
            except torch.cuda.OutOfMemoryError:
                if chunk <= 1:
                    raise
                chunk = max(1, chunk // 2)
                torch.cuda.empty_cache()
    probs = probs.view(passes, b, *probs.shape[1:])
    return probs.mean(0), probs.var(0, unbiased=True)
