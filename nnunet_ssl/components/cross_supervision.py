"""Losses between two networks that teach each other (the dual-network method of Chaddad et al. 2025, and any
cross pseudo supervision): adaptive entropy masking, the KL-weighted pseudo-label loss and the prototype
contrast of uncertain voxels' features. Shapes: logits and probabilities (B, C, *spatial), features
(B, D, *spatial), label maps and masks (B, *spatial). Every target is detached here or by the caller's argmax: a
loss trains the network of its first argument only.
"""
from typing import Tuple

import torch
import torch.nn.functional as F


def top_percent(values: torch.Tensor, percent: float) -> torch.Tensor:
    """Boolean mask of the voxels in the top `percent` % of `values` over the whole tensor (the batch): those
    strictly above the value ranked n - k, k = floor(percent/100 n). Ties at that value are left out, so a batch
    whose values are all equal (all certain, or uniformly uncertain: no ranking to make) has an empty top."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    flat = values.detach().flatten()
    k = int(percent / 100.0 * flat.numel())
    if k == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k == flat.numel():
        return torch.ones_like(values, dtype=torch.bool)
    # kthvalue, not torch.quantile: quantile refuses tensors of more than 2^24 elements (a 3D batch has more)
    threshold = flat.float().kthvalue(flat.numel() - k).values
    return values.detach() > threshold


def entropy_filter(entropy_a: torch.Tensor, entropy_b: torch.Tensor, percent: float) -> torch.Tensor:
    """The voxels to keep: all but those where both networks' entropies are in their own batch's top `percent` %
    (each network's own percentile: the two networks' entropy scales differ)."""
    return ~(top_percent(entropy_a, percent) & top_percent(entropy_b, percent))


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """CE(logits, target) over the kept voxels, rescaled by N / N_kept (U2PL's weighting): the mean over the kept
    voxels, so the loss scale does not shrink with the share ignored. Zero (with a graph) when none is kept."""
    if target.requires_grad:
        raise ValueError("the target label map must not carry a graph")
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    keep = keep.to(ce.dtype)
    return (ce * keep).sum() / keep.sum().clamp(min=1.0)


def kl_weighted_pseudo_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                  temperature: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The student learns the teacher's argmax where the two agree, and is pulled towards it where they do not:

        KL_v = sum_c q_c (log q_c - log softmax(z_s)_c),  q = softmax(z_t / T)  (detached)
        L    = mean_v [exp(-KL_v) CE(z_s, argmax z_t)_v] + mean_v KL_v

    (the rectified pseudo-label loss of Zheng & Yang 2021). The gradient runs through exp(-KL_v) too: a voxel
    where the student disagrees counts less in the CE, and the KL term keeps it from disagreeing more to earn
    that. Returns (L, mean KL_v)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher_logits = teacher_logits.detach().float()
    log_p_student = torch.log_softmax(student_logits.float(), 1)
    log_q = torch.log_softmax(teacher_logits / temperature, 1)
    kl = (log_q.exp() * (log_q - log_p_student)).sum(1)
    ce = F.nll_loss(log_p_student, teacher_logits.argmax(1), reduction="none")
    mean_kl = kl.mean()
    return (torch.exp(-kl) * ce).mean() + mean_kl, mean_kl.detach()


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, reliable: torch.Tensor,
                     num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(prototypes (C, D), present (C,)): per class the L2-normalised mean of the L2-normalised features of the
    reliable voxels of that pseudo label, detached (a prototype is a target); `present` is False for a class
    with no reliable voxel (its row is zero)."""
    unit = F.normalize(features.detach().float(), dim=1).flatten(2)  # (B, D, N)
    weights = F.one_hot(labels.long().flatten(1), num_classes).to(unit.dtype)  # (B, N, C)
    weights = weights * reliable.flatten(1).unsqueeze(-1).to(unit.dtype)
    sums = torch.einsum("bdn,bnc->cd", unit, weights)
    present = weights.sum((0, 1)) > 0
    return F.normalize(sums, dim=1), present


def prototype_infonce(features: torch.Tensor, labels: torch.Tensor, selected: torch.Tensor,
                      prototypes: torch.Tensor, present: torch.Tensor, temperature: float = 0.07,
                      max_voxels: int = 4096) -> torch.Tensor:
    """InfoNCE of the selected voxels' L2-normalised features against the class prototypes:

        L = mean_v -log [exp(f_v . c_y(v) / tau) / sum_{c present} exp(f_v . c_c / tau)]

    with y(v) the voxel's label. Voxels whose class has no prototype are skipped; at most `max_voxels` selected
    voxels are drawn at random (memory and time stay bounded at any patch size). Zero, with the features' graph,
    when no voxel is usable or fewer than two prototypes exist (a one-class softmax is constant)."""
    batch_index, *spatial_index = torch.nonzero(selected & present[labels.long()], as_tuple=True)
    if batch_index.numel() == 0 or int(present.sum()) < 2:
        return features.sum() * 0.0
    if batch_index.numel() > max_voxels:
        pick = torch.randperm(batch_index.numel(), device=batch_index.device)[:max_voxels]
        batch_index, spatial_index = batch_index[pick], [i[pick] for i in spatial_index]
    chosen = features[(batch_index, slice(None), *spatial_index)]  # (K, D)
    unit = F.normalize(chosen.float(), dim=1)
    classes = torch.nonzero(present, as_tuple=True)[0]
    logits = unit @ prototypes[classes].T / temperature  # (K, classes present)
    target = torch.searchsorted(classes, labels[(batch_index, *spatial_index)].long())
    return F.cross_entropy(logits, target)
