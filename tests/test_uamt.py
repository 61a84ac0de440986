"""nnUNetTrainerUAMT: uncertainty maps, the top-K patch replacement, the ASPP head, gradients of each unsupervised
term, the two-stage step, and the stock CLIs end to end. (Every UAMT class, 2D and 3D: tests/test_contract.py.)"""
import glob
import math
import os

import pytest
import torch

from conftest import assert_blended_with_labeled, predict_test_set_2d, train_in_process
from nnunet_ssl.architectures.aspp import ASPPHead, scaled_rates
from nnunet_ssl.components.patch_replacement import (from_patches, patch_grid, to_patches,
                                                      uncertainty_replacement)
from nnunet_ssl.components.uncertainty import mixture_entropy
from test_contract import check_terms_on_backward

UAMT = "nnUNetTrainerUAMT"


# ---------------------------------------------------------------------- uncertainty map
def test_mixture_entropy_by_hand():
    one_hot = lambda c, n: torch.nn.functional.one_hot(torch.tensor([c]), n).float()[..., None]  # noqa: E731
    assert mixture_entropy(one_hot(0, 2), one_hot(0, 2)).item() == 0.0  # both sure, agreeing
    assert mixture_entropy(one_hot(0, 2), one_hot(1, 2)).item() == pytest.approx(math.log(2))  # sure, disagreeing
    uniform = torch.full((1, 3, 1), 1 / 3)
    assert mixture_entropy(uniform, one_hot(2, 3)).item() == pytest.approx(
        -2 * (1 / 6) * math.log(1 / 6) - (2 / 3) * math.log(2 / 3))


# ---------------------------------------------------------------------- patch grid and replacement
@pytest.mark.parametrize("shape,divisions,side,counts", [
    ((48, 48), 16, (3, 3), (16, 16)),
    ((50, 35), 16, (3, 2), (16, 17)),  # not divisible: remainders of 2 and 1 voxels
    ((8, 40), 16, (1, 2), (8, 20)),  # smaller than the grid: side 1
    ((20, 20, 20), 8, (2, 2, 2), (10, 10, 10)),
    ((9, 33, 17), 8, (1, 4, 2), (9, 8, 8)),
])
def test_patch_grid(shape, divisions, side, counts):
    grid = patch_grid(shape, divisions)
    assert (grid.side, grid.counts) == (side, counts)
    assert all(s - c < g for s, c, g in zip(shape, grid.covered, side))  # the remainder is less than one patch
    x = torch.randn(2, 3, *shape)
    assert to_patches(x, grid).shape == (2, grid.n_patches, 3 * math.prod(side))
    assert torch.equal(from_patches(to_patches(x, grid), x, grid), x)


def _patch_map(values, side, extra=0):
    """(B, L) per-patch values (row-major 2 x 2 grid) -> (B, 1, 2 side + extra, 2 side + extra) map; the remainder
    strip of `extra` voxels holds -1."""
    values = torch.as_tensor(values, dtype=torch.float32).view(-1, 1, 2, 2)
    m = values.repeat_interleave(side, 2).repeat_interleave(side, 3)
    return torch.nn.functional.pad(m, (0, extra, 0, extra), value=-1.0)


@pytest.mark.parametrize("extra", [0, 1])  # 4x4 and 5x5 images: grid 2x2 of 2x2 patches, 1-voxel remainder
def test_top_k_swap_by_hand(extra):
    side = 2
    u_1 = [[0.9, 0.5, 0.1, 0.3], [0.1, 0.3, 0.9, 0.5]]  # sample 1: the same ranks, patches permuted
    u_2 = [[0.2, 0.8, 0.05, 0.6], [0.6, 0.05, 0.8, 0.2]]
    maps = [_patch_map(u, side, extra)[:, 0] for u in (u_1, u_2)]
    maps[0][:, -1, -1] = 1e6 if extra else maps[0][:, -1, -1]  # an uncertain remainder voxel changes no rank
    image = _patch_map([[0, 1, 2, 3], [0, 1, 2, 3]], side, extra)  # each patch holds its own index
    image = torch.cat([image, 10 * image], 1)  # two channels
    label = (_patch_map([[0, 1, 2, 3], [0, 1, 2, 3]], side, extra) + 100).long()
    grid = patch_grid(image.shape[2:], 2)

    def contents(x):
        return to_patches(x[:, :1], grid)[..., 0].tolist()

    # K = 1: the U_1-most uncertain patch gets the U_2-most confident one, then the U_2-most uncertain the
    # U_1-most confident one. Sample 0: 0 <- 2, then 1 <- 2. Sample 1: 2 <- 1, then 2 <- 0.
    move = uncertainty_replacement(*maps, 1, grid)
    assert contents(move.apply(image)) == [[2, 2, 2, 3], [0, 1, 0, 3]]
    assert torch.equal(move.apply(image)[:, 1:], 10 * move.apply(image)[:, :1])  # every channel moves
    assert torch.equal(move.apply(label) - 100, move.apply(image)[:, :1].long())  # the label moves with the pixels
    assert move.moved_fraction(image.shape[2:]) == pytest.approx((2 + 1) * side ** 2 / (2 * image[0, 0].numel()))
    # K = 2 (each move reads the patches before it, all at once), sample 0: {0, 1} <- {2, 0}, then {1, 3} <- {2, 3};
    # sample 1: {2, 3} <- {1, 3}, then {2, 0} <- {0, 1}. A patch written onto itself is no move.
    move = uncertainty_replacement(*maps, 2, grid)
    assert contents(move.apply(image)) == [[2, 2, 2, 3], [1, 1, 0, 3]]
    assert move.moved_fraction(image.shape[2:]) == pytest.approx((2 + 2) * side ** 2 / (2 * image[0, 0].numel()))
    if extra:  # the remainder strip never moves
        assert torch.equal(move.apply(image)[..., -1], image[..., -1]) and \
            torch.equal(move.apply(image)[..., -1, :], image[..., -1, :])


def test_one_head_moves_once_and_k_edges():
    u = torch.rand(2, 12, 12)
    grid = patch_grid((12, 12), 4)  # 16 patches of 3x3
    image = torch.arange(2 * 144, dtype=torch.float32).view(2, 1, 12, 12)
    move = uncertainty_replacement(u, u, 16, grid)  # the same map: one move; K = all patches reverses the ranks
    assert len(move.moves) == 1
    mixed = to_patches(move.apply(image), grid)
    assert torch.equal(mixed.sort(1).values, to_patches(image, grid).sort(1).values)  # a permutation of patches
    assert len(uncertainty_replacement(u, u.clone(), 1, grid).moves) == 2
    for k in (0, 17):
        with pytest.raises(ValueError, match="K = "):
            uncertainty_replacement(u, u, k, grid)


def test_3d_replacement_moves_labels_with_voxels():
    torch.manual_seed(0)
    image = torch.randn(2, 2, 11, 17, 9)  # not divisible by the 8-per-axis grid
    label = (image[:, :1] > 0.3).long() + (image[:, 1:] > 0).long()  # a function of the voxels
    grid = patch_grid(image.shape[2:], 8)
    move = uncertainty_replacement(torch.rand(2, 11, 17, 9), torch.rand(2, 11, 17, 9), 5, grid)
    mixed, mixed_label = move.apply(image), move.apply(label)
    assert not torch.equal(mixed, image) and 0 < move.moved_fraction(image.shape[2:]) < 1
    assert torch.equal(mixed_label, (mixed[:, :1] > 0.3).long() + (mixed[:, 1:] > 0).long())


# ---------------------------------------------------------------------- the ASPP head
def _ops(dim):
    conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dim == 2 else (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    return {"conv_op": conv, "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "nonlin": torch.nn.LeakyReLU, "nonlin_kwargs": {"inplace": True}}


@pytest.mark.parametrize("spatial", [(48, 40), (8, 12, 10)])
def test_aspp_head_shape(spatial):
    rates = scaled_rates(spatial)
    head = ASPPHead(_ops(len(spatial)), 16, 3, rates, width=8)
    features = torch.randn(2, 16, *spatial, requires_grad=True)
    out = head(features)
    assert out.shape == (2, 3, *spatial)
    out.sum().backward()
    assert features.grad.abs().sum() > 0
    assert [b[0].dilation for b in head.branches[1:]] == list(rates)


def test_aspp_rates_scale_with_the_patch():
    assert scaled_rates((128, 128)) == ((24, 24), (48, 48), (72, 72))
    assert scaled_rates((20, 160, 4)) == ((4, 30, 1), (8, 60, 2), (11, 90, 2))  # per axis, at least 1


# ---------------------------------------------------------------------- the trainer
def make_trainer(name=UAMT, fold=0, **attributes):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("801", "2d", fold, name, "nnUNetPlans", device=torch.device("cpu"))
    for k, v in attributes.items():
        setattr(trainer, k, v)
    trainer.on_train_start()
    return trainer


def _grad_norms(trainer, value):
    """|d value / d parameters| of the ASPP head, the main head's 1x1 layer, the shared decoder, the teacher."""
    net = trainer.network
    parts = {"aspp": net.heads.aspp, "main_head": net.backbone.decoder.seg_layers[-1],
             "decoder": net.backbone.decoder.stages}
    out = {}
    for name, module in parts.items():
        grads = torch.autograd.grad(value, list(module.parameters()), retain_graph=True, allow_unused=True)
        out[name] = sum(0.0 if g is None else g.abs().sum().item() for g in grads)
    return out


def test_each_unsupervised_term_trains_the_right_head(dataset_2d):
    """pseudo_loss trains both heads; each head-to-head direction trains its head only (the other head is its
    target, stop-gradient); nothing reaches the teacher. In both stages."""
    torch.manual_seed(0)
    trainer = make_trainer(rampup_fraction=0.0)
    seen = []
    original = trainer.backward

    def recording(loss):
        for term in trainer.pending_terms:
            seen.append((term.name, term.target_from, _grad_norms(trainer, term.value)))
        original(loss)

    trainer.backward = recording
    try:
        trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.on_train_end()
    assert [(n, t) for n, t, _ in seen] == [
        (f"{s}{n}", t) for s in ("", "mix_") for n, t in
        (("pseudo_loss", "teacher"), ("cross_loss", "network.heads.aspp"),
         ("cross_loss", "network.backbone.decoder.seg_layers"))]
    for name, target, g in seen:
        assert g["decoder"] > 0, name  # shared features learn from every term
        if name.endswith("pseudo_loss"):
            assert g["aspp"] > 0 and g["main_head"] > 0
        elif target.endswith("aspp"):  # h_1 learns from argmax h_2
            assert g["main_head"] > 0 and g["aspp"] == 0
        else:  # h_2 learns from argmax h_1
            assert g["aspp"] > 0 and g["main_head"] == 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())


def test_term_check_fails_for_a_target_with_gradient(dataset_2d, monkeypatch):
    """The contract's check catches a head-to-head target that was not stopped: the other head's softmax, not
    detached, with a soft loss (a plausible CPS variant) sends gradient into the target's head."""
    trainer = make_trainer(rampup_fraction=0.0)
    monkeypatch.setattr(trainer, "argmax", lambda logits: torch.softmax(logits, 1))

    def soft_or_hard(logits, target):
        if target.dtype.is_floating_point:
            return ((torch.softmax(logits, 1) - target) ** 2).mean()
        return torch.nn.functional.cross_entropy(logits, target[:, 0])

    monkeypatch.setattr(trainer, "hard_label_loss", soft_or_hard)
    check_terms_on_backward(trainer, {})
    try:
        with pytest.raises(AssertionError, match="gradient reaches its target's provider network.heads.aspp"):
            trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.on_train_end()


def test_term_check_fails_for_a_term_without_student_gradient(dataset_2d, monkeypatch):
    """...and terms computed on a detached student output (they would train nothing)."""
    trainer = make_trainer(rampup_fraction=0.0, patch_replacement=False)
    losses = trainer.unsupervised_losses

    def detached(v):
        return [t.detach() for t in v] if isinstance(v, list) else v.detach()

    monkeypatch.setattr(trainer, "unsupervised_losses", lambda prefix, out, pseudo_label: losses(
        prefix, {k: detached(v) for k, v in out.items()}, pseudo_label))
    reached = {}
    check_terms_on_backward(trainer, reached)
    try:
        with pytest.raises(RuntimeError, match="does not require grad"):
            trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.on_train_end()
    assert reached == {"pseudo_loss": False, "cross_loss": False}


def test_two_stages_one_iteration_and_warm_start(dataset_2d):
    """Two optimizer steps and EMA updates per iteration, one iteration counted; with the warm start both updates
    of iteration 0 use a = 0, so the teacher equals the student after it."""
    torch.manual_seed(0)
    trainer = make_trainer()
    steps = []
    for optimizer in trainer.optimizers.values():
        optimizer.register_step_post_hook(lambda *args: steps.append(1))
    try:
        before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
        out = trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.on_train_end()
    assert len(steps) == 2 and trainer.iteration_in_epoch == 1
    assert set(trainer.ssl_log_keys) <= set(out) and 0 < out["moved_fraction"] < 1 and out["uncertainty"] > 0
    student, teacher = trainer.network.state_dict(), trainer.teacher.state_dict()
    assert any(not torch.equal(before[k], student[k]) for k in student)
    assert all(torch.equal(student[k], teacher[k]) for k in student)


def test_loss_weights(dataset_2d):
    trainer = make_trainer()
    literal = make_trainer("nnUNetTrainerUAMT_LiteralWeighting")
    try:
        lam, weights = trainer.loss_weights()
        assert (lam, *weights) == pytest.approx((0.1 * math.exp(-5), 1.0, 0.1 * math.exp(-5)))
        lam, weights = literal.loss_weights()
        assert (lam, *weights) == pytest.approx((math.exp(-5), math.exp(-5), 1 - math.exp(-5)))
        trainer.iteration_in_epoch = literal.iteration_in_epoch = math.ceil(0.2 * trainer.total_iterations)
        assert trainer.loss_weights()[0] == pytest.approx(0.1)  # t_r reached
        assert literal.loss_weights()[0] < 0.2
    finally:
        trainer.on_train_end()
        literal.on_train_end()


def test_ablations_declare_their_terms_and_cost():
    from nnunet_ssl.trainers.nnUNetTrainerUAMT import (nnUNetTrainerUAMT, nnUNetTrainerUAMT_AMT,
                                                       nnUNetTrainerUAMT_UMT)
    assert nnUNetTrainerUAMT.unsupervised_terms == ("pseudo_loss", "cross_loss", "mix_pseudo_loss",
                                                    "mix_cross_loss")
    assert nnUNetTrainerUAMT_AMT.unsupervised_terms == ("pseudo_loss", "cross_loss")
    assert "moved_fraction" not in nnUNetTrainerUAMT_AMT.ssl_log_keys
    assert nnUNetTrainerUAMT_UMT.unsupervised_terms == ("pseudo_loss", "mix_pseudo_loss")
    assert (nnUNetTrainerUAMT.step_cost.student_passes, nnUNetTrainerUAMT.step_cost.teacher_passes) == (4, 2)
    assert (nnUNetTrainerUAMT_AMT.step_cost.student_passes, nnUNetTrainerUAMT_AMT.step_cost.teacher_passes) == (2, 1)



def test_labeled_mix_variant_blends_the_student_view_only():
    """_LabeledMix: the student sees lam x_u + (1 - lam) x_l (lam >= 0.5, one per sample) before P; the parent's
    student sees x_u itself (perturbation off here to see the blend). The teacher's input is not a view: x_u."""
    from nnunet_ssl.trainers.nnUNetTrainerUAMT import nnUNetTrainerUAMT, nnUNetTrainerUAMT_LabeledMix
    x_u, x_l = torch.zeros(6, 1, 8, 8), torch.ones(2, 1, 8, 8)
    views = {}
    for cls in (nnUNetTrainerUAMT, nnUNetTrainerUAMT_LabeledMix):
        trainer = object.__new__(cls)  # student_view needs only the class's settings
        trainer.student_perturbation = None
        views[cls] = trainer.student_view(x_u, x_l)
    assert torch.equal(views[nnUNetTrainerUAMT], x_u)
    assert_blended_with_labeled(views[nnUNetTrainerUAMT_LabeledMix])


# ---------------------------------------------------------------------- what the stock CLIs run
def test_train_resume_predict_as_the_stock_clis_do(dataset_2d, nnunet_env, tmp_path):
    """nnUNetv2_train, --c and nnUNetv2_predict as those commands run once they have parsed their arguments, in
    process (the commands themselves, for a teacher-student trainer: tests/test_mirau.py)."""
    folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset801_T2D", f"{UAMT}__nnUNetPlans__2d", "fold_2")
    train_in_process("801", "2d", "2", UAMT, validate=False, nnUNet_ssl_epochs=1)
    train_in_process("801", "2d", "2", UAMT, continue_training=True, nnUNet_ssl_epochs=2)
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert "Epoch 1" in log and "Epoch 0" not in log
    assert all(key in log for key in ("mix_cross_loss", "moved_fraction", "uncertainty", "lambda"))
    assert "Final validation with the teacher_mean weights" in log
    final = os.path.join(folder, "checkpoint_final.pth")
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    assert sorted(checkpoint["inference_choices"]) == ["student_main", "student_mean", "teacher_main",
                                                       "teacher_mean"]
    # nnUNetv2_predict with the default choice (all four choices, 2D and 3D: tests/test_contract.py)
    predict_test_set_2d(dataset_2d, tmp_path / "teacher_mean", UAMT, fold="2", in_process=True)
