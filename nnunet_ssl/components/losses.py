"""Unsupervised loss terms shared by the trainers."""
import torch
import torch.nn.functional as F


def consistency_mse(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher probabilities (softmax MSE in Mean Teacher).

    The teacher side is a target: teacher probabilities that carry a graph would let the consistency train
    the teacher (or the student through the teacher path), so they are refused."""
    if teacher_probs.requires_grad:
        raise ValueError("teacher probabilities must not require grad: compute them under torch.no_grad()")
    return F.mse_loss(student_probs.float(), teacher_probs.float())
