"""nnUNetTrainerMIRAU and nnUNetTrainerMIM: the soft pseudo labels, masks and confidences by hand; the strong view;
patch masking and the masked L1; the M teacher passes as one batched forward; where dropout is on; the gradient of
each unsupervised term; the masked-image-modelling phase; the stock CLIs end to end (--c inside the MIM phase,
nnUNetv2_predict, -pretrained_weights from an nnUNetTrainerMIM checkpoint). Every class, 2D and 3D:
tests/test_contract.py."""
import glob
import math
import os
import textwrap

import pytest
import torch

from conftest import assert_blended_with_labeled, predict_test_set_2d, run_cli
from nnunet_ssl.components.losses import soft_cross_entropy, soft_dice_loss, weighted_voxel_mean
from nnunet_ssl.components.masked_image_modelling import mask_patches, masked_l1, patch_mask
from nnunet_ssl.components.perturbations import CutOut, cutout_mask
from nnunet_ssl.components.soft_pseudo_labels import soft_pseudo_labels

MIRAU, MIM = "nnUNetTrainerMIRAU", "nnUNetTrainerMIM"


# ---------------------------------------------------------------------- soft pseudo labels by hand
def test_binary_soft_labels_confidence_and_mask_by_hand():
    # three voxels: sure (sigma 0.1), at the threshold (0.15: masked out, strict <), unsure (0.3)
    mu_fg = torch.tensor([0.8, 0.6, 0.3])
    sigma = torch.tensor([0.1, 0.15, 0.3])
    mu = torch.stack([1 - mu_fg, mu_fg])[None]  # (1, 2, 3)
    variance = torch.stack([sigma, sigma])[None] ** 2  # two softmax classes: the same spread
    pseudo = soft_pseudo_labels(mu, variance, kappa=0.5, tau=0.15)
    w = torch.exp(-sigma / 0.5)
    torch.testing.assert_close(pseudo.confidence[0], w)
    assert pseudo.mask[0].tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(pseudo.target[0, 1], w * mu_fg)  # y~ = w mu, the paper's form
    torch.testing.assert_close(pseudo.target[0, 0], 1 - w * mu_fg)
    assert pseudo.target[0, 1, 0].item() == pytest.approx(math.exp(-0.2) * 0.8)
    assert soft_pseudo_labels(mu, variance, 0.5, tau=None).mask.tolist() == [[1.0, 1.0, 1.0]]  # no mask
    torch.testing.assert_close(soft_pseudo_labels(mu, variance, 0.5, 0.15, mean_target=True).target, mu)


def test_multi_class_soft_labels_by_hand():
    mu = torch.tensor([0.1, 0.3, 0.6]).view(1, 3, 1)
    sigma = torch.tensor([0.05, 0.10, 0.12]).view(1, 3, 1)
    pseudo = soft_pseudo_labels(mu, sigma ** 2, kappa=0.5, tau=0.15)
    w = math.exp(-0.12 / 0.5)  # the largest class sigma
    assert pseudo.sigma.item() == pytest.approx(0.12) and pseudo.confidence.item() == pytest.approx(w)
    assert pseudo.mask.item() == 1.0
    assert pseudo.target.flatten().tolist() == pytest.approx([1 - w * 0.9, w * 0.3, w * 0.6])
    assert pseudo.target.sum(1).item() == pytest.approx(1.0)  # a distribution, no renormalisation needed
    # one class fluctuating by tau or more masks the voxel
    assert soft_pseudo_labels(mu, torch.tensor([0.01, 0.2, 0.01]).view(1, 3, 1) ** 2, 0.5, 0.15).mask.item() == 0


def test_weighted_losses_by_hand():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]]).T[None].requires_grad_()  # (1, 2 classes, 2 voxels)
    target = torch.tensor([[0.3, 0.7], [1.0, 0.0]]).T[None]
    ce = soft_cross_entropy(logits, target)
    log_p = torch.log_softmax(logits.detach(), 1)
    torch.testing.assert_close(ce, -(target * log_p).sum(1))
    assert weighted_voxel_mean(ce, torch.tensor([[0.5, 0.0]])).item() == pytest.approx(ce[0, 0].item())
    zero = weighted_voxel_mean(ce, torch.zeros(1, 2))  # every voxel masked: exactly 0, no gradient
    zero.backward()
    assert zero.item() == 0.0 and logits.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="must not require grad"):
        soft_cross_entropy(logits, target.requires_grad_())


@pytest.mark.parametrize("batch_dice", [True, False])
def test_weighted_soft_dice_by_hand(batch_dice):
    """nnUNetTrainerMIRAU_MeanTargetDice's term: nnU-Net's soft Dice on the foreground against a soft target, with
    per-voxel weights; it pushes a border voxel whose target is 0.4 toward foreground, where the soft CE is at its
    optimum."""
    p_fg = torch.tensor([[0.6, 0.4, 0.9], [0.2, 0.7, 0.5]])  # (2 samples, 3 voxels)
    y_fg = torch.tensor([[1.0, 0.4, 0.0], [0.3, 1.0, 0.5]])
    weights = torch.tensor([[1.0, 1.0, 0.0], [0.5, 1.0, 1.0]])  # the third voxel of sample 0 ignored
    probs, target = (torch.stack([1 - v, v], 1) for v in (p_fg, y_fg))
    axes = (0, 1) if batch_dice else (1,)
    dice = (2 * (weights * p_fg * y_fg).sum(axes) + 1e-5) / ((weights * p_fg).sum(axes) + (weights * y_fg).sum(axes)
                                                             + 1e-5)
    loss = soft_dice_loss(probs, target, weights, batch_dice)
    assert loss.item() == pytest.approx(1 - dice.mean().item(), abs=1e-6)

    logits = torch.log(probs[:1, :, :2]).requires_grad_()  # softmax gives back p; sample 0's two kept voxels
    soft_dice_loss(torch.softmax(logits, 1), target[:1, :, :2], weights[:1, :2], batch_dice).backward()
    assert logits.grad[0, 1, 1] < 0 < logits.grad[0, 0, 1]  # gradient descent raises the border voxel's foreground
    border = logits.detach()[..., 1:].requires_grad_()
    soft_cross_entropy(border, target[:1, :, 1:2]).sum().backward()
    assert border.grad.abs().max() < 1e-6  # the CE is already at its optimum there

    zero_logits = logits.detach().clone().requires_grad_()
    zero = soft_dice_loss(torch.softmax(zero_logits, 1), target[:1, :, :2], torch.zeros(1, 2), batch_dice)
    zero.backward()
    assert zero.item() == 0.0 and zero_logits.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="must not require grad"):
        soft_dice_loss(probs, target.clone().requires_grad_(), weights, batch_dice)


def test_entropy_term_keeps_a_finite_gradient_where_a_probability_underflows():
    """L_ent on a confident voxel (logit gap 120: softmax gives exactly 0 in float32). The entropy of the
    probabilities back-propagates NaN there (0 * -inf through softmax), which stopped a PH2 training at its third
    ssl epoch; the entropy of the logits has gradient 0 there and the same value everywhere."""
    from nnunet_ssl.components.uncertainty import entropy, entropy_of_logits

    logits = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(entropy_of_logits(logits), entropy(torch.softmax(logits, 1)))
    confident = torch.tensor([0.0, 120.0]).view(1, 2, 1)
    grads = []
    for term in (lambda z: entropy(torch.softmax(z, 1)), entropy_of_logits):
        z = confident.clone().requires_grad_()
        term(z).sum().backward()
        grads.append(z.grad)
    assert torch.isnan(grads[0]).all()  # the form the trainer must not use
    assert torch.equal(grads[1], torch.zeros_like(confident))


# ---------------------------------------------------------------------- strong view and patch masking
@pytest.mark.parametrize("spatial", [(48, 40), (20, 24, 16)])
def test_cutout_holes_are_small_and_leave_the_geometry(spatial):
    torch.manual_seed(0)
    setting = CutOut(p=1.0)
    mask = cutout_mask((6, 3) + spatial, setting)
    for m in mask[:, 0]:
        assert 0 < m.mean() <= 8 * math.prod(max(1, int(s / 8)) for s in spatial) / math.prod(spatial)
    assert cutout_mask((4, 1) + spatial, CutOut(p=0.0)).sum() == 0


@pytest.mark.parametrize("spatial,patch,cells", [((48, 48), (8, 8), 36), ((20, 20, 20), (8, 8, 8), 27)])
def test_patch_mask_hides_three_quarters_of_the_patches(spatial, patch, cells):
    torch.manual_seed(0)
    mask = patch_mask((3, 1) + spatial, patch, 0.75)
    assert mask.shape == (3, 1) + spatial
    padded = torch.nn.functional.pad(mask, [0, 4] * len(spatial))  # the 20-voxel axes: a partial third patch
    grid = padded[(slice(None), 0) + tuple(slice(0, None, p) for p in patch)][
        (slice(None),) + tuple(slice(0, math.ceil(s / p)) for s, p in zip(spatial, patch))]
    assert grid.flatten(1).sum(1).tolist() == [round(0.75 * cells)] * 3  # exactly 75 % of each image's patches
    blocks = mask[(0, 0) + tuple(slice(0, p) for p in patch)]  # a patch is masked or kept as a whole
    assert blocks.min() == blocks.max()


def test_masked_l1_only_sees_the_hidden_patches():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    mask = patch_mask(x.shape, (8, 8), 0.75)
    masked = mask_patches(x, mask)
    visible = 1 - mask
    means = ((x * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True)).expand_as(x)
    torch.testing.assert_close(masked[mask.expand_as(x).bool()], means[mask.expand_as(x).bool()])  # visible means
    assert torch.equal(masked[~mask.expand_as(x).bool()], x[~mask.expand_as(x).bool()])  # the rest unchanged
    reconstruction = x.clone().requires_grad_()
    loss = masked_l1(reconstruction, x, mask)  # perfect on every voxel
    assert loss.item() == 0.0
    wrong_outside = (x + 5 * (1 - mask)).requires_grad_()  # wrong on the visible voxels only
    loss = masked_l1(wrong_outside, x, mask)
    loss.backward()
    assert loss.item() == 0.0 and wrong_outside.grad[~mask.expand_as(x).bool()].abs().sum() == 0
    wrong_inside = x + mask
    assert masked_l1(wrong_inside, x, mask).item() == pytest.approx(1.0)


# ---------------------------------------------------------------------- the trainer
def make_trainer(name=MIRAU, fold=0, ssl_phase=True, **attributes):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("801", "2d", fold, name, "nnUNetPlans", device=torch.device("cpu"))
    for k, v in attributes.items():
        setattr(trainer, k, v)
    trainer.on_train_start()
    if ssl_phase and len(trainer.phases()) > 1:  # into the semi-supervised phase, through its phase start
        trainer.current_epoch = trainer.phase_starts[1]
        trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    return trainer


def test_teacher_passes_are_one_batched_forward_with_dropout_only_there(dataset_2d, nnunet_env):
    """The M MC passes: one teacher forward of M x B samples with its dropout on (and nothing else in training
    mode); the student's passes with dropout on; afterwards the teacher is back in eval mode."""
    from nnunet_ssl.architectures.dropout import dropout_layers
    torch.manual_seed(0)
    trainer = make_trainer()
    teacher, student = trainer.teacher.module, trainer.network
    calls = []
    teacher.register_forward_pre_hook(lambda m, args: calls.append(("teacher", args[0].shape[0], [
        layer.training for layer in dropout_layers(m)], any(x.training for x in m.modules()
                                                            if not isinstance(x, torch.nn.Dropout)))))
    student.register_forward_pre_hook(lambda m, args: calls.append(("student", args[0].shape[0], [
        layer.training for layer in dropout_layers(m)], torch.is_grad_enabled())))
    try:
        out = trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.on_train_end()
    b, m = trainer.batch_size, trainer.mc_passes
    teacher_calls = [c for c in calls if c[0] == "teacher"]
    assert [c[1] for c in teacher_calls] == [m * b]  # one batched forward of M x B
    assert all(teacher_calls[0][2]) and teacher_calls[0][3] is False  # dropout on, normalisation etc. in eval
    student_calls = [c for c in calls if c[0] == "student"]
    # labeled (with graph), weak view (no graph: the stop-gradient target), strong view (with graph)
    assert [(c[1], c[3]) for c in student_calls] == [(b, True), (b, False), (b, True)]
    assert all(all(c[2]) for c in student_calls)  # the student trains with dropout
    assert not any(layer.training for layer in dropout_layers(teacher))
    assert 0 <= out["kept_fraction"] <= 1 and 0 < out["confidence"] <= 1 and out["beta"] == pytest.approx(math.exp(-5))


def test_no_dropout_in_validation_or_prediction(dataset_2d, nnunet_env):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    trainer = make_trainer()
    try:
        x = next(trainer.dataloader_val)["data"][:1]
        trainer.on_validation_epoch_start()  # nnU-Net's validation: eval mode, the inference weights
        with torch.no_grad():
            a, b = trainer.network(x)[0], trainer.network(x)[0]
        trainer.on_validation_epoch_end([trainer.validation_step(next(trainer.dataloader_val))])
        assert torch.equal(a, b)
        trainer.network.train()
        with torch.no_grad():
            assert not torch.equal(trainer.network(x)[0], trainer.network(x)[0])  # dropout in training mode
        trainer.set_deep_supervision_enabled(False)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                    perform_everything_on_device=False, allow_tqdm=False)
        predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                        trainer.dataset_json, MIRAU, None)
        image = x[0][:, None]  # nnU-Net's 2D case: (c, 1, x, y)
        first = predictor.predict_sliding_window_return_logits(image)
        torch.testing.assert_close(first, predictor.predict_sliding_window_return_logits(image))
    finally:
        trainer.on_train_end()


def _decoder_gradient(trainer, value):
    grads = torch.autograd.grad(value, list(trainer.network.decoder.parameters()), retain_graph=True,
                                allow_unused=True)
    return sum(0.0 if g is None else g.abs().sum().item() for g in grads)


@pytest.mark.parametrize("tau_u", [0.15, 1e-9])
def test_gradient_of_each_unsupervised_term(dataset_2d, nnunet_env, tau_u):
    """Each term trains the student, none reaches the teacher; with every voxel masked out (tau_u ~ 0) the
    pseudo-label and consistency terms are exactly zero and train nothing, the entropy term still trains."""
    torch.manual_seed(0)
    trainer = make_trainer(tau_u=tau_u)
    seen = {}
    original = trainer.backward

    def recording(loss):
        for term in trainer.pending_terms:
            seen[term.name] = (term.value.item(), _decoder_gradient(trainer, term.value), term.target_from)
        original(loss)

    trainer.backward = recording
    try:
        out = trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.on_train_end()
    assert sorted(seen) == ["consistency_loss", "entropy_loss", "pseudo_loss"]
    assert seen["pseudo_loss"][2] == "teacher" and seen["consistency_loss"][2] is None
    assert seen["entropy_loss"][1] > 0
    if tau_u < 1e-6:
        assert out["kept_fraction"] == 0.0
        assert seen["pseudo_loss"][:2] == (0.0, 0.0) and seen["consistency_loss"][:2] == (0.0, 0.0)
    else:
        assert seen["pseudo_loss"][1] > 0 and seen["consistency_loss"][1] > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())


def test_mim_phase_head_optimizer_and_teacher_start(dataset_2d, nnunet_env):
    """During the MIM phase the reconstruction head has its own optimizer and the teacher is not updated; the
    semi-supervised phase drops the head's optimizer and starts the teacher from the pretrained student; the
    head never reaches network_weights."""
    torch.manual_seed(0)
    trainer = make_trainer(ssl_phase=False)
    try:
        assert trainer.reconstructing and set(trainer.optimizers) == {"network", "reconstruction_head"}
        teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
        head_before = {k: v.clone() for k, v in trainer.reconstruction_head.state_dict().items()}
        out = trainer.train_step(next(trainer.dataloader_train))
        assert out["reconstruction_loss"] > 0 and math.isnan(out["pseudo_loss"])
        assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in teacher_before.items())
        assert any(not torch.equal(v, trainer.reconstruction_head.state_dict()[k]) for k, v in head_before.items())
        trainer.current_epoch = trainer.phase_starts[1]
        trainer.on_epoch_start()
        assert not trainer.reconstructing and set(trainer.optimizers) == {"network"}
        student = trainer.network.state_dict()
        assert all(torch.equal(student[k], v) for k, v in trainer.teacher.state_dict().items())
        extras = trainer.checkpoint_extras()
        assert extras["network_weights"].keys() == student.keys() and "reconstruction_head" in extras
    finally:
        trainer.on_train_end()


def test_variant_ablations_and_cost():
    from nnunet_ssl.trainers.nnUNetTrainerMIRAU import (nnUNetTrainerMIRAU, nnUNetTrainerMIRAU_MeanTarget,
                                                        nnUNetTrainerMIRAU_NoEntropy, nnUNetTrainerMIRAU_NoMIM,
                                                        nnUNetTrainerMIRAU_NoUncertaintyMask)
    assert (nnUNetTrainerMIRAU.step_cost.student_passes, nnUNetTrainerMIRAU.step_cost.teacher_passes) == (2, 9)
    assert nnUNetTrainerMIRAU_MeanTarget.mean_target and nnUNetTrainerMIRAU_NoUncertaintyMask.tau_u is None
    assert nnUNetTrainerMIRAU_NoMIM.mim_fraction == 0 and nnUNetTrainerMIRAU_NoEntropy.gamma == 0
    assert "entropy_loss" not in nnUNetTrainerMIRAU_NoEntropy.unsupervised_terms
    from nnunet_ssl.trainers.nnUNetTrainerMIRAU import (nnUNetTrainerMIRAU_MeanTargetDice,
                                                        nnUNetTrainerMIRAU_MeanTargetLabeledMixDice)
    assert nnUNetTrainerMIRAU.lambda_dice == 0
    for dice_variant in (nnUNetTrainerMIRAU_MeanTargetDice, nnUNetTrainerMIRAU_MeanTargetLabeledMixDice):
        assert dice_variant.lambda_dice == 1.0 and dice_variant.mean_target


def test_labeled_mix_variant_blends_the_strong_view_only():
    """_MeanTargetLabeledMix: x_s = lam x_w + (1 - lam) x_l (lam >= 0.5, one per sample) before the strong
    perturbation; the parent's x_s is x_w's own (here with the perturbations switched off to see the blend)."""
    from nnunet_ssl.components.perturbations import Photometric
    from nnunet_ssl.trainers.nnUNetTrainerMIRAU import (nnUNetTrainerMIRAU_MeanTarget,
                                                        nnUNetTrainerMIRAU_MeanTargetLabeledMix)
    x_w, x_l = torch.zeros(6, 1, 8, 8), torch.ones(2, 1, 8, 8)
    views = {}
    for cls in (nnUNetTrainerMIRAU_MeanTarget, nnUNetTrainerMIRAU_MeanTargetLabeledMix):
        trainer = object.__new__(cls)  # strong_view needs only the class's settings
        trainer.strong_photometric, trainer.strong_cutout = Photometric(p=0.0), CutOut(p=0.0)
        views[cls] = trainer.strong_view(x_w, x_l)
    assert torch.equal(views[nnUNetTrainerMIRAU_MeanTarget], x_w)
    assert_blended_with_labeled(views[nnUNetTrainerMIRAU_MeanTargetLabeledMix])


# ---------------------------------------------------------------------- stock CLIs
def test_cli_resume_inside_the_mim_phase_and_predict(dataset_2d, nnunet_env, tmp_path, monkeypatch):
    """One MIM epoch in process (checkpoint_latest written after it, as nnUNet_ssl_save_every=1 makes nnU-Net do),
    then stock nnUNetv2_train --c crosses into the semi-supervised phase and finishes; nnUNetv2_predict."""
    from nnunetv2.run.run_training import get_trainer_from_args
    # 2 epochs: the MIM phase gets at least one (epoch 0), the semi-supervised phase the other
    for k, v in {"nnUNet_ssl_epochs": "2", "nnUNet_ssl_iters": "2", "nnUNet_ssl_save_every": "1"}.items():
        monkeypatch.setenv(k, v)
    trainer = get_trainer_from_args("801", "2d", 1, MIRAU, "nnUNetPlans", device=torch.device("cpu"))
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    trainer.on_train_epoch_end([trainer.train_step(next(trainer.dataloader_train)) for _ in range(2)])
    trainer.on_validation_epoch_start()
    trainer.on_validation_epoch_end([trainer.validation_step(next(trainer.dataloader_val))])
    trainer.on_epoch_end()  # writes checkpoint_latest.pth (epoch 1 next, still in phase 0)
    folder = trainer.output_folder
    monkeypatch.delenv("nnUNet_ssl_save_every")
    latest = torch.load(os.path.join(folder, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    assert (latest["current_epoch"], latest["phase"]) == (1, 0)
    assert set(latest["optimizer_states"]) == {"network", "reconstruction_head"}
    run_cli("nnUNetv2_train", "801", "2d", "1", "-tr", MIRAU, "-device", "cpu", "--c",
            env={"nnUNet_ssl_epochs": "2", "nnUNet_ssl_iters": "2"})
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert "Epoch 1" in log and "Epoch 0" not in log and "Phase 1 (ssl) from epoch 1" in log
    assert all(k in log for k in ("pseudo_loss", "kept_fraction", "Final validation with the teacher weights"))
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and final["phase"] == 1 and set(final["optimizer_states"]) == {"network"}
    assert not any("reconstruction" in k for k in final["network_weights"])
    predict_test_set_2d(dataset_2d, tmp_path / "pred", MIRAU, fold="1")


def test_cli_mim_pretraining_then_pretrained_weights(dataset_2d, nnunet_env, tmp_path):
    """nnUNetTrainerMIM through the stock command, then its checkpoint_final.pth into nnU-Net's own trainer
    (a 1-epoch subclass of nnUNetTrainer) with stock -pretrained_weights, and into MIRA-U's dropout network."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_ssl.architectures.dropout import dropout_layers
    run_cli("nnUNetv2_train", "801", "2d", "2", "-tr", MIM, "-device", "cpu",
            env={"nnUNet_ssl_epochs": "1", "nnUNet_ssl_iters": "2"})
    folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset801_T2D", f"{MIM}__nnUNetPlans__2d", "fold_2")
    pretrained = os.path.join(folder, "checkpoint_final.pth")
    checkpoint = torch.load(pretrained, map_location="cpu", weights_only=False)
    assert "reconstruction_head" in checkpoint and not any("reconstruction" in k for k in checkpoint["network_weights"])
    assert not os.path.isfile(os.path.join(folder, "checkpoint_best.pth"))  # nothing to select on
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert "reconstruction_loss" in log and "No final validation" in log

    short = tmp_path / "trainers"
    short.mkdir()
    (short / "nnUNetTrainerTwoSteps.py").write_text(textwrap.dedent("""
        import torch
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        class nnUNetTrainerTwoSteps(nnUNetTrainer):
            def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
                super().__init__(plans, configuration, fold, dataset_json, device)
                self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1

            def perform_actual_validation(self, save_probabilities=False):
                pass  # nnU-Net's own, and slow to start: not what this test is about
        """))
    r = run_cli("nnUNetv2_train", "801", "2d", "2", "-tr", "nnUNetTrainerTwoSteps", "-device", "cpu",
                "-pretrained_weights", pretrained,
                env={"nnUNet_extTrainer": os.pathsep.join([nnunet_env["nnUNet_extTrainer"], str(short)])})
    assert "Loading pretrained weights from file" in r.stdout

    # MIRA-U's network has dropout, and the same keys: every weight but the segmentation layers arrives, in the
    # student and (built from it when the training starts) in the teacher, as nnUNetv2_train -pretrained_weights
    # does it: initialize(), load_pretrained_weights(network), then the training
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("801", "2d", 2, MIRAU, "nnUNetPlans", device=torch.device("cpu"))
    trainer.initialize()
    load_pretrained_weights(trainer.network, pretrained)
    trainer.on_train_start()
    try:
        assert dropout_layers(trainer.network)
        for state in (trainer.network.state_dict(), trainer.teacher.state_dict()):
            for key, value in checkpoint["network_weights"].items():
                if ".seg_layers." not in key:
                    assert torch.equal(state[key], value.to(state[key].device)), key
    finally:
        trainer.on_train_end()
