"""Unsupervised loss terms shared by the trainers."""
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss


def consistency_mse(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher probabilities (softmax MSE in Mean Teacher).

    The teacher side is a target: teacher probabilities that carry a graph would let the consistency train
    the teacher (or the student through the teacher path), so they are refused."""
    if teacher_probs.requires_grad:
        raise ValueError("teacher probabilities must not require grad: compute them under torch.no_grad()")
    return F.mse_loss(student_probs.float(), teacher_probs.float())


def hard_label_dc_ce() -> DC_and_CE_loss:
    """nnU-Net's CE + soft Dice (DC_and_CE_loss, MemoryEfficientSoftDiceLoss) for targets that are hard label
    maps made by a model (a teacher's pseudo label, another head's argmax): Dice per sample and class with the
    background included (UCMT's DSCLoss), smooth 1e-5. Call it with logits (B, C, *spatial) and labels
    (B, 1, *spatial); the labels carry no graph, so the loss trains the logits' side only."""
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": True, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE(y~, p) = -sum_c y~_c log softmax(z)_c per voxel: (B, C, *spatial) -> (B, *spatial). From the logits
    (log_softmax), which stays finite where a probability underflows. The target carries no graph."""
    if target.requires_grad:
        raise ValueError("a soft target must not require grad: compute it under torch.no_grad()")
    return -(target.float() * torch.log_softmax(logits.float(), 1)).sum(1)


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, batch_dice: bool) -> torch.Tensor:
    """1 - nnU-Net's soft Dice (MemoryEfficientSoftDiceLoss: foreground classes, smooth 1e-5) of probabilities
    against a soft target, both (B, C, *spatial), each voxel weighted by `weights` (B, *spatial); batch_dice as
    the plans' supervised loss. 0, with zero gradient, where every weight is 0.

    Why beside a CE on soft targets: d(1 - Dice)/dp_v < 0 wherever y_v > I / S (I the weighted intersection, S
    the weighted sums of p and y), i.e. above about half the current Dice: while the Dice is below 0.8, a border
    voxel whose target is 0.4 is pushed toward foreground (as by nnU-Net's supervised Dice + CE), where a CE alone
    pulls it to 0.4."""
    if target.requires_grad:
        raise ValueError("a soft target must not require grad: compute it under torch.no_grad()")
    dice = MemoryEfficientSoftDiceLoss(batch_dice=batch_dice, do_bg=False, smooth=1e-5, ddp=False)
    return 1.0 + dice(probs.float(), target.float(), loss_mask=weights.float().unsqueeze(1))


def squared_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """||p - q||^2 over classes per voxel: (B, C, *spatial) -> (B, *spatial)."""
    return ((p.float() - q.float()) ** 2).sum(1)


def weighted_voxel_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(weights values) / sum(weights); exactly 0, with zero gradient, where every weight is 0."""
    weights = weights.float()
    return (weights * values).sum() / weights.sum().clamp(min=1e-8)
