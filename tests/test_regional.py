"""SGRS building blocks on tiny tensors whose expected values are computed by hand."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_ssl.components.perturbations import mix_up
from nnunet_ssl.components.regional import (PAPER_MIN_CONFIDENCE, PAPER_TAU, entropy_threshold_for_probability,
                                            normalized_entropy, regional_cross_entropy, regional_dice_loss,
                                            regional_dice_loss_per_class, synergy_regions)


def two_class(p1):
    """(1, 2, *spatial) probabilities from the class-1 probabilities p1 (*spatial)."""
    p1 = torch.tensor(p1, dtype=torch.float32)
    return torch.stack([1 - p1, p1]).unsqueeze(0)


# ---------------------------------------------------------------- entropy
def test_normalized_entropy_extremes_and_hand_values():
    assert torch.allclose(normalized_entropy(torch.full((1, 2, 3), 0.5)), torch.ones(1, 3))
    assert torch.allclose(normalized_entropy(torch.full((2, 4, 2, 2), 0.25)), torch.ones(2, 2, 2))
    one_hot = F.one_hot(torch.tensor([[0, 2, 1]]), 3).movedim(-1, 1).float()
    assert torch.equal(normalized_entropy(one_hot), torch.zeros(1, 3))
    # H(0.25) = 0.25 ln 4 + 0.75 ln(4/3) = 0.5623 nats = 0.8113 bits; [0.5, 0.5, 0] has ln 2 nats of 3 classes
    assert normalized_entropy(two_class([0.25])).item() == pytest.approx(0.811278, abs=1e-5)
    h = normalized_entropy(torch.tensor([0.5, 0.5, 0.0]).view(1, 3, 1))
    assert not torch.isnan(h).any() and h.item() == pytest.approx(math.log(2) / math.log(3), abs=1e-6)


def test_entropy_threshold_matches_the_paper():
    assert entropy_threshold_for_probability(0.425) == pytest.approx(0.98378, abs=1e-4)
    assert round(PAPER_TAU * math.log(2) / math.log(10), 3) == 0.296  # the paper's base-10 tau
    assert entropy_threshold_for_probability(0.5) == pytest.approx(1.0)
    assert entropy_threshold_for_probability(1.0) == 0.0
    assert normalized_entropy(two_class([0.425])).item() == pytest.approx(PAPER_TAU, abs=1e-6)


# ---------------------------------------------------------------- regions
def test_region_partition_on_hand_made_example():
    # voxels: uncertain in P_U only | uncertain in P_M only | consistent 1
    #         consistent 0          | inconsistent         | consistent 0
    p_u = two_class([[0.50, 0.90, 0.90], [0.10, 0.90, 0.30]])
    p_m = two_class([[0.90, 0.45, 0.80], [0.05, 0.20, 0.20]])
    r = synergy_regions(p_u, p_m, PAPER_TAU)
    assert r.disregarded.tolist() == [[[True, True, False], [False, False, False]]]
    assert r.consistent.tolist() == [[[False, False, True], [True, False, True]]]
    assert r.inconsistent.tolist() == [[[False, False, False], [False, True, False]]]
    assert r.fractions() == pytest.approx({"delta": 2 / 6, "omega": 3 / 6, "theta": 1 / 6})


def test_confidence_rule_is_the_papers_entropy_rule_for_two_classes_and_still_bites_for_many():
    p_fg = torch.rand(1, 4000, generator=torch.Generator().manual_seed(0)).tolist()
    p_fg[0] += [0.42, 0.43, 0.57, 0.58, 0.5, 0.0, 1.0]
    p_u, p_m = two_class(p_fg), two_class([p_fg[0][::-1]])
    by_entropy = synergy_regions(p_u, p_m, tau=PAPER_TAU)
    by_confidence = synergy_regions(p_u, p_m, min_confidence=0.575)
    assert 0.1 < by_entropy.disregarded.float().mean() < 0.3
    assert torch.equal(by_entropy.disregarded, by_confidence.disregarded)

    def voxel(*probs, classes):  # the given probabilities, the rest spread evenly over the other classes
        rest = (1 - sum(probs)) / (classes - len(probs))
        return torch.tensor(list(probs) + [rest] * (classes - len(probs))).view(1, classes, 1)
    for classes in (3, 14):
        split = voxel(0.5, 0.5, classes=classes)  # between two organs
        sure = voxel(0.9, classes=classes)
        assert synergy_regions(split, split, min_confidence=PAPER_MIN_CONFIDENCE).disregarded.all()
        assert synergy_regions(sure, sure, min_confidence=PAPER_MIN_CONFIDENCE).consistent.all()
        assert not synergy_regions(sure, split, min_confidence=PAPER_MIN_CONFIDENCE).consistent.any()
    # the normalized-entropy rule keeps the 14-class split voxel: H / ln 14 = ln 2 / ln 14 = 0.26 < 0.98
    split14 = voxel(0.5, 0.5, classes=14)
    assert normalized_entropy(split14).item() == pytest.approx(math.log(2) / math.log(14), abs=1e-5)
    assert synergy_regions(split14, split14, tau=PAPER_TAU).consistent.all()
    with pytest.raises(ValueError, match="exactly one"):
        synergy_regions(split14, split14)


def test_region_tau_edges():
    p = two_class([0.3])
    tau = normalized_entropy(p).item()
    assert synergy_regions(p, p, tau).consistent.all()  # exactly at tau: kept
    assert synergy_regions(p, p, tau - 1e-6).disregarded.all()
    p_u = two_class([0.5, 0.7, 1.0, 0.0])
    p_m = two_class([0.5, 0.0, 1.0, 1.0])
    assert not synergy_regions(p_u, p_m, 1.0).disregarded.any()
    uniform7 = torch.softmax(torch.zeros(1, 7, 3), 1)  # unclamped float32 entropy is 1 + 2 ulp here
    assert normalized_entropy(uniform7).max().item() <= 1.0
    assert not synergy_regions(uniform7, uniform7, 1.0).disregarded.any()
    assert synergy_regions(p_u, p_m, 0.0).disregarded.tolist() == [[True, True, False, False]]


def test_region_argmax_ties_go_to_class_zero():
    tie = two_class([0.5])
    assert synergy_regions(tie, two_class([0.1]), 1.0).consistent.all()
    assert synergy_regions(tie, two_class([0.9]), 1.0).inconsistent.all()


def test_regions_are_disjoint_cover_and_carry_no_graph():
    g = torch.Generator().manual_seed(0)
    p_u = torch.softmax(3 * torch.randn(2, 3, 4, 5, 6, generator=g), 1).requires_grad_()
    p_m = torch.softmax(3 * torch.randn(2, 3, 4, 5, 6, generator=g), 1)
    r = synergy_regions(p_u, p_m, 0.6)
    count = r.disregarded.int() + r.consistent.int() + r.inconsistent.int()
    assert count.shape == (2, 4, 5, 6) and torch.equal(count, torch.ones_like(count))
    assert all(0 < f < 1 for f in r.fractions().values())
    assert sum(r.fractions().values()) == pytest.approx(1.0)
    assert not any(m.requires_grad for m in (r.disregarded, r.consistent, r.inconsistent))


# ---------------------------------------------------------------- regional cross-entropy
# four voxels, p(class 1) = 0.8, 0.4, 0.3, 0.6, pseudo label 1, 0, 1, 0, region = the first two
P1, Y, REGION = [0.8, 0.4, 0.3, 0.6], torch.tensor([[1, 0, 1, 0]]), torch.tensor([[True, True, False, False]])


def test_regional_ce_hand_values():
    probs = two_class(P1)
    # summed over the 2 region voxels, divided by all 4 voxels of the batch
    assert regional_cross_entropy(probs, Y, REGION).item() == pytest.approx(
        -(math.log(0.8) + math.log(0.6)) / 4, abs=1e-6)
    # eq. 15, eps = 0.2, C = 2: 0.8 * (-log p_y) + 0.1 * (-log p_0 - log p_1)
    v0 = -0.8 * math.log(0.8) - 0.1 * (math.log(0.2) + math.log(0.8))
    v1 = -0.8 * math.log(0.6) - 0.1 * (math.log(0.6) + math.log(0.4))
    assert regional_cross_entropy(probs, Y, REGION, label_smoothing=0.2).item() == pytest.approx(
        (v0 + v1) / 4, abs=1e-6)
    assert (v0 + v1) / 2 == pytest.approx(0.456573, abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_regional_ce_matches_torch_cross_entropy(eps):
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 3, 4, 5, generator=g), 1)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    region = torch.rand(2, 4, 5, generator=g) > 0.5
    per_voxel = F.cross_entropy(probs.log(), target, label_smoothing=eps, reduction="none")
    assert regional_cross_entropy(probs, target, region, eps).item() == pytest.approx(
        per_voxel[region].sum().item() / region.numel(), rel=1e-5)
    everything = torch.ones_like(region)
    assert regional_cross_entropy(probs, target, everything, eps).item() == pytest.approx(
        F.cross_entropy(probs.log(), target, label_smoothing=eps).item(), rel=1e-5)


def assert_empty_region_and_gradient_locality(loss):
    """`loss(probs, target, region)` is a graph-connected 0 on an empty region, and on REGION its gradient
    reaches exactly the region's voxels."""
    probs = two_class(P1).requires_grad_()
    empty = loss(probs, Y, torch.zeros_like(REGION))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(probs.grad, torch.zeros_like(probs))
    probs.grad = None
    loss(probs, Y, REGION).backward()
    assert torch.equal(probs.grad[..., 2:], torch.zeros(1, 2, 2))
    assert (probs.grad[..., :2] != 0).all()


def test_regional_ce_empty_region_and_gradient_locality():
    assert_empty_region_and_gradient_locality(lambda p, y, r: regional_cross_entropy(p, y, r, 0.2))


def test_regional_ce_is_finite_for_zero_probabilities():
    probs = two_class([1.0, 0.0]).requires_grad_()
    loss = regional_cross_entropy(probs, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool), 0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(probs.grad).all()


# ---------------------------------------------------------------- regional Dice
def test_regional_dice_hand_values():
    probs = two_class(P1)
    # region voxels: p = (0.2, 0.8), (0.6, 0.4); y = (0, 1), (1, 0)
    # sum p y = 0.8 + 0.6 = 1.4; sum p^2 = 0.04 + 0.64 + 0.36 + 0.16 = 1.2; sum y^2 = 2
    assert regional_dice_loss(probs, Y, REGION).item() == pytest.approx(1 - 2.8 / 3.2, abs=1e-6)
    assert regional_dice_loss(probs, Y, REGION, 20.0).item() == pytest.approx(1 - 2.8 / 23.2, abs=1e-6)
    # whole tensor as Theta: sum p y = 2.1; sum p^2 = 1.2 + 0.58 + 0.52 = 2.3; sum y^2 = 4
    whole = regional_dice_loss(probs, Y, torch.ones_like(REGION), 20.0)
    assert torch.isfinite(whole) and whole.item() == pytest.approx(1 - 4.2 / 26.3, abs=1e-6)


def test_regional_dice_perfect_prediction_is_zero():
    probs = F.one_hot(Y, 2).movedim(-1, 1).float()
    assert regional_dice_loss(probs, Y, REGION).item() == pytest.approx(0.0, abs=1e-7)


def test_regional_dice_empty_region_and_gradient_locality():
    for eta in (0.0, 20.0):
        assert_empty_region_and_gradient_locality(lambda p, y, r: regional_dice_loss(p, y, r, eta))


def test_per_class_regional_dice_hand_values():
    probs = two_class(P1)
    # region voxels as above: p = (0.2, 0.8), (0.6, 0.4); y = (0, 1), (1, 0); per class c, linear sums:
    # c = 0: sum p y = 0.6, sum p = 0.8, sum y = 1;  c = 1: sum p y = 0.8, sum p = 1.2, sum y = 1
    for s in (1.0, 20.0):
        dice = [(1.2 + s) / (1.8 + s), (1.6 + s) / (2.2 + s)]
        assert regional_dice_loss_per_class(probs, Y, REGION, s).item() == pytest.approx(1 - np.mean(dice), abs=1e-6)
    # a second sample with an empty region counts 0 in the mean over samples and classes
    two = regional_dice_loss_per_class(torch.cat([probs, probs]), torch.cat([Y, Y]),
                                       torch.cat([REGION, torch.zeros_like(REGION)]), 1.0)
    assert two.item() == pytest.approx(regional_dice_loss_per_class(probs, Y, REGION, 1.0).item() / 2, abs=1e-6)
    # a large smoothing makes a tiny region cost about nothing (the code's s = 20 on Theta)
    tiny = torch.zeros_like(REGION)
    tiny[..., 0] = True
    assert regional_dice_loss_per_class(probs, Y, tiny, 20.0).item() < 0.02 < regional_dice_loss(probs, Y, tiny).item()


def test_per_class_regional_dice_empty_region_and_gradient_locality():
    for smooth in (1.0, 20.0):
        assert_empty_region_and_gradient_locality(lambda p, y, r: regional_dice_loss_per_class(p, y, r, smooth))


# ---------------------------------------------------------------- mix-up
def test_mix_up_lambda_range_and_formula():
    x_u = torch.randn(200, 2, 3, 3, dtype=torch.float64)
    x_l = torch.randn(200, 2, 3, 3, dtype=torch.float64)
    x_m, lam = mix_up(x_u, x_l, 0.5, np.random.default_rng(0))
    b = np.random.default_rng(0).beta(0.5, 0.5, size=200)
    assert lam.shape == (200,) and ((lam >= 0.5) & (lam <= 1)).all()
    assert np.allclose(lam.numpy(), np.where(b > 0.5, b, 1 - b))
    for i in (0, 57, 199):
        assert torch.allclose(x_m[i], lam[i] * x_u[i] + (1 - lam[i]) * x_l[i])


def test_mix_up_large_alpha_gives_even_mix():
    _, lam = mix_up(torch.zeros(50, 1, 2, 2), torch.ones(50, 1, 2, 2), 1e4, np.random.default_rng(0))
    assert ((lam - 0.5).abs() < 0.02).all()


def test_mix_up_pairs_with_labeled_sample_modulo_batch():
    x_u = torch.zeros(5, 1, 2, 2, 2)  # 3D, B_u = 5
    x_l = torch.stack([torch.full((1, 2, 2, 2), 100.0), torch.full((1, 2, 2, 2), 200.0)])  # B_l = 2
    x_m, lam = mix_up(x_u, x_l, 1.0, np.random.default_rng(3))
    assert x_m.shape == (5, 1, 2, 2, 2)
    for i, partner in enumerate([100.0, 200.0, 100.0, 200.0, 100.0]):
        assert torch.allclose(x_m[i], torch.full((1, 2, 2, 2), (1 - lam[i].item()) * partner))


def test_mix_up_gradient_and_inputs():
    x_u = torch.randn(2, 1, 3, 4, 5).requires_grad_()
    x_l = torch.randn(2, 1, 3, 4, 5)
    before_u, before_l = x_u.detach().clone(), x_l.clone()
    x_m, lam = mix_up(x_u, x_l, 1.0, np.random.default_rng(0))
    x_m.sum().backward()
    assert x_l.grad is None
    assert torch.allclose(x_u.grad, lam.view(2, 1, 1, 1, 1).expand_as(x_u))
    assert torch.equal(x_u.detach(), before_u) and torch.equal(x_l, before_l)
    assert x_m.data_ptr() not in (x_u.data_ptr(), x_l.data_ptr())
    with torch.no_grad():
        x_m, _ = mix_up(x_u, x_l, 1.0)
    assert not x_m.requires_grad
