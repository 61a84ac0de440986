"""nnUNetTrainerDualNet: the entropy mask, the KL-weighted pseudo-label loss, the prototypes and their InfoNCE by
hand; the winner selection; each unsupervised term's gradient (measured, not as registered) into the network it
trains and none into the other; the stock CLIs (train, --c, predict with the default choice, the ensemble).
Save/resume and prediction with every inference choice in 2D and 3D: tests/test_contract.py."""
import glob
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_blended_with_labeled, predict_test_set_2d, run_cli, train_in_process
from nnunet_ssl.components.cross_supervision import (class_prototypes, entropy_filter, kl_weighted_pseudo_label_loss,
                                                     masked_cross_entropy, prototype_infonce, top_percent)
from nnunet_ssl.components.uncertainty import entropy

DUALNET = "nnUNetTrainerDualNet"
PAPER = "nnUNetTrainerDualNet_Paper"


# ---------------------------------------------------------------------- the entropy mask
@pytest.mark.parametrize("values,percent,expected", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 20, [8, 9]),  # k = 2 distinct top values
    ([0, 0, 0, 1, 1], 40, [3, 4]),
    ([0, 1, 1, 1, 1], 20, []),  # ties at the threshold are left out, not drawn at random
    ([3, 3, 3, 3], 50, []),  # all equal: no ranking, nothing is "top"
    ([0, 1, 2, 3], 0, []),
    ([0, 1, 2, 3], 100, [0, 1, 2, 3]),
    ([0, 1, 2, 3], 10, []),  # floor(0.4) = 0 voxels
])
def test_top_percent(values, percent, expected):
    mask = top_percent(torch.tensor(values, dtype=torch.float), percent)
    assert torch.nonzero(mask).flatten().tolist() == expected


def test_top_percent_is_over_the_whole_batch():
    values = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # (B=2, N=2): the top 50 % are sample 1's voxels
    assert top_percent(values, 50).tolist() == [[False, False], [True, True]]


def test_entropy_filter_ignores_where_both_are_uncertain():
    # 5 voxels, 2 classes; A uncertain at voxels 3 and 4, B at voxels 2 and 4 (top 40 % each)
    p_a = torch.tensor([[0.99, 0.98, 0.97, 0.6, 0.5]]).reshape(1, 1, 5)
    p_b = torch.tensor([[0.99, 0.95, 0.55, 0.9, 0.6]]).reshape(1, 1, 5)
    h_a, h_b = (entropy(torch.cat([p, 1 - p], 1)) for p in (p_a, p_b))
    keep = entropy_filter(h_a, h_b, 40)
    assert keep.tolist() == [[True, True, True, True, False]]


@pytest.mark.parametrize("kind", ["certain", "uncertain"])
def test_entropy_filter_on_degenerate_batches(kind):
    """All one-hot (entropy 0 everywhere) or all uniform: nothing ignored, no NaN anywhere."""
    logits = torch.zeros(2, 3, 4, 4) if kind == "uncertain" else F.one_hot(
        torch.randint(0, 3, (2, 4, 4)), 3).permute(0, 3, 1, 2).float() * 1e4
    h = entropy(torch.softmax(logits, 1))
    keep = entropy_filter(h, h, 20)
    assert keep.all() and torch.isfinite(h).all()
    target = logits.argmax(1)
    loss = masked_cross_entropy(logits.requires_grad_(), target, keep)
    assert torch.isfinite(loss)


def test_masked_cross_entropy_is_the_mean_over_kept_voxels():
    logits = torch.randn(1, 3, 2, 3, requires_grad=True)
    target = torch.randint(0, 3, (1, 2, 3))
    keep = torch.tensor([[[True, False, True], [False, False, True]]])
    ce = F.cross_entropy(logits, target, reduction="none")
    assert masked_cross_entropy(logits, target, keep).item() == pytest.approx(ce[keep].mean().item(), rel=1e-6)
    # = the mean over all voxels of the kept CE, rescaled by N / N_kept
    assert masked_cross_entropy(logits, target, keep).item() == pytest.approx(
        (ce * keep).mean().item() * 6 / 3, rel=1e-6)
    nothing = masked_cross_entropy(logits, target, torch.zeros_like(keep))
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="graph"):
        masked_cross_entropy(logits, logits.argmax(1).float().requires_grad_(), keep)


# ---------------------------------------------------------------------- KL-weighted pseudo labels
def test_kl_weighted_loss_by_hand():
    z_s = torch.tensor([[[1.0], [0.0]]])  # (B=1, C=2, N=1)
    z_t = torch.tensor([[[0.0], [2.0]]])  # teacher says class 1
    loss, mean_kl = kl_weighted_pseudo_label_loss(z_s, z_t, temperature=1.0)
    p = torch.softmax(z_s[0, :, 0], 0)
    q = torch.softmax(z_t[0, :, 0], 0)
    kl = float((q * (q.log() - p.log())).sum())
    ce = -math.log(float(p[1]))
    assert mean_kl.item() == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(math.exp(-kl) * ce + kl, rel=1e-6)
    # temperature sharpens the teacher's distribution, not its argmax
    _, sharp_kl = kl_weighted_pseudo_label_loss(z_s, z_t, temperature=0.5)
    q_sharp = torch.softmax(z_t[0, :, 0] / 0.5, 0)
    assert sharp_kl.item() == pytest.approx(float((q_sharp * (q_sharp.log() - p.log())).sum()), rel=1e-6)


def test_kl_weighted_loss_agreeing_networks_is_plain_cross_entropy():
    z = torch.randn(2, 3, 5)
    loss, mean_kl = kl_weighted_pseudo_label_loss(z, z.clone(), 1.0)
    assert mean_kl.item() == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(z, z.argmax(1)).item(), rel=1e-5)


def test_kl_weighted_loss_trains_the_student_only():
    z_s, z_t = torch.randn(1, 3, 6, requires_grad=True), torch.randn(1, 3, 6, requires_grad=True)
    loss, _ = kl_weighted_pseudo_label_loss(z_s, z_t)
    g_s, g_t = torch.autograd.grad(loss, [z_s, z_t], allow_unused=True)
    assert g_s.abs().sum() > 0 and g_t is None


# ---------------------------------------------------------------------- prototypes and their InfoNCE
def test_prototypes_by_hand():
    # 4 voxels of 2-D features: class 0 at voxels 0, 1 (reliable), class 1 at voxel 2 (reliable), 3 (ignored)
    f = torch.tensor([[[3.0, 0.0, 1.0, 5.0], [0.0, 2.0, 1.0, 5.0]]], requires_grad=True)  # (1, D=2, N=4)
    labels = torch.tensor([[0, 0, 1, 1]])
    reliable = torch.tensor([[True, True, True, False]])
    prototypes, present = class_prototypes(f, labels, reliable, num_classes=3)
    assert present.tolist() == [True, True, False]
    # class 0: mean of (1, 0) and (0, 1), normalised; class 1: (1, 1)/sqrt 2; voxel 3 (ignored) does not count
    r = 1 / math.sqrt(2)
    assert torch.allclose(prototypes, torch.tensor([[r, r], [r, r], [0.0, 0.0]]), atol=1e-6)
    assert not prototypes.requires_grad  # a target


def test_infonce_by_hand_and_its_gradient():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    present = torch.tensor([True, True])
    f = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]], requires_grad=True)  # voxel 0 = (2, 0), voxel 1 = (0, 1)
    labels = torch.tensor([[1, 1]])  # both voxels are class 1
    selected = torch.tensor([[True, False]])  # only voxel 0 (an ignored voxel) is pulled
    loss = prototype_infonce(f, labels, selected, prototypes, present, temperature=0.5)
    # unit feature (1, 0): logits (1/0.5, 0/0.5) = (2, 0); class 1 -> -log(e^0 / (e^2 + e^0))
    assert loss.item() == pytest.approx(-math.log(1 / (math.exp(2) + 1)), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, f)
    assert grad[0, :, 0].abs().sum() > 0 and grad[0, :, 1].abs().sum() == 0  # only the selected voxel moves


def test_infonce_degenerate_cases_are_zero_with_a_graph():
    f = torch.randn(1, 4, 3, 3, requires_grad=True)
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    prototypes, present = class_prototypes(f, labels, torch.ones(1, 3, 3, dtype=torch.bool), 2)
    one_class = prototype_infonce(f, labels, torch.ones(1, 3, 3, dtype=torch.bool), prototypes, present)
    assert one_class.item() == 0.0 and one_class.requires_grad  # a one-class softmax is constant
    prototypes = torch.eye(4)[:2]
    nothing = prototype_infonce(f, labels, torch.zeros(1, 3, 3, dtype=torch.bool), prototypes,
                                torch.tensor([True, True]))
    assert nothing.item() == 0.0


def test_infonce_subsamples_the_selected_voxels():
    torch.manual_seed(0)
    f = torch.randn(2, 4, 16, 16, requires_grad=True)
    labels = torch.randint(0, 2, (2, 16, 16))
    prototypes, present = F.normalize(torch.randn(2, 4), dim=1), torch.tensor([True, True])
    loss = prototype_infonce(f, labels, torch.ones(2, 16, 16, dtype=torch.bool), prototypes, present,
                             max_voxels=10)
    (grad,) = torch.autograd.grad(loss, f)
    assert int((grad.abs().sum(1) > 0).sum()) == 10


# ---------------------------------------------------------------------- the trainer
def build(dataset_2d, name=DUALNET):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("801", "2d", "all", name, "nnUNetPlans", device=torch.device("cpu"))
    trainer.on_train_start()
    return trainer


def test_winner_is_the_lower_supervised_loss(dataset_2d):
    trainer = build(dataset_2d)
    try:
        assert trainer.competition({"a": torch.tensor(0.3), "b": torch.tensor(0.7)}) == ("a", "b")
        assert trainer.competition({"a": torch.tensor(0.9), "b": torch.tensor(0.2)}) == ("b", "a")
        assert trainer.competition({"a": torch.tensor(0.5), "b": torch.tensor(0.5)}) == ("a", "b")
    finally:
        trainer.on_train_end()


@pytest.mark.parametrize("name,winner", [(DUALNET, "a"), (DUALNET, "b"), (PAPER, "a")])
def test_each_term_trains_its_network_and_not_its_target_provider(dataset_2d, monkeypatch, name, winner):
    """Measured on the terms' values, whatever their registration says: CPS_k moves network k only, the KL and
    prototype terms move the loser only; the lambda_c-weighted total as well."""
    trainer = build(dataset_2d, name)
    loser = "b" if winner == "a" else "a"
    monkeypatch.setattr(trainer, "competition", lambda sup: (winner, loser))
    monkeypatch.setattr(trainer, "rampup", lambda fraction: 1.0)  # lambda_c = 0.1, not ~0 at the first step
    nets = trainer.optimized_modules()
    grads = {}
    original = trainer.backward

    def measuring(loss):
        for term in trainer.pending_terms:
            for k, net in nets.items():
                g = torch.autograd.grad(term.value, list(net.parameters()), retain_graph=True, allow_unused=True)
                grads[(term.name, k)] = sum(float(x.abs().sum()) for x in g if x is not None)
        original(loss)

    monkeypatch.setattr(trainer, "backward", measuring)
    try:
        trainer.on_train_epoch_start()
        for _ in range(2):  # the prototype term needs ignored voxels of a class with a prototype: 2 steps
            out = trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.on_train_end()
    assert grads[("cps_loss_a", "a")] > 0 and grads[("cps_loss_a", "b")] == 0
    assert grads[("cps_loss_b", "b")] > 0 and grads[("cps_loss_b", "a")] == 0
    for term in ("kl_loss", "proto_loss"):
        assert grads[(term, loser)] > 0 and grads[(term, winner)] == 0, term
    assert out["a_wins"] == float(winner == "a") and 0.0 < out["ignored_fraction"] <= 0.2 + 1e-6


def test_default_learns_on_the_labeled_blend_and_takes_its_targets_from_the_unlabeled_image(dataset_2d):
    """The default (and its old name _LabeledMix): both networks learn on lam x_u + (1 - lam) x_l (lam >= 0.5, one
    per sample); the targets are both networks' no-grad predictions of x_u itself. _Paper learns on x_u, and its
    targets are that learning pass, detached."""
    from nnunet_ssl.architectures.common import full_resolution
    from nnunet_ssl.trainers.nnUNetTrainerDualNet import (nnUNetTrainerDualNet, nnUNetTrainerDualNet_LabeledMix,
                                                          nnUNetTrainerDualNet_Paper)

    x_u, x_l = torch.zeros(6, 1, 8, 8), torch.ones(2, 1, 8, 8)
    assert nnUNetTrainerDualNet_Paper.unlabeled_views(object.__new__(nnUNetTrainerDualNet_Paper), x_u, x_l) == \
        (x_u, None)
    for cls in (nnUNetTrainerDualNet, nnUNetTrainerDualNet_LabeledMix):
        x_learn, x_target = cls.unlabeled_views(object.__new__(cls), x_u, x_l)
        assert x_target is x_u
        assert_blended_with_labeled(x_learn)

    trainer = build(dataset_2d)
    try:
        x_u = torch.randn(2, trainer.num_input_channels, *trainer.configuration_manager.patch_size)
        targets = trainer.target_logits(None, x_u)
        with torch.no_grad():
            out = trainer.network(x_u, all_outputs=True)
        for k in ("a", "b"):
            assert not targets[k].requires_grad and torch.allclose(targets[k], full_resolution(out[k]).float())
        z = {k: v.clone().requires_grad_() for k, v in targets.items()}
        assert all(not t.requires_grad for t in trainer.target_logits(z, None).values())  # no target view
    finally:
        trainer.on_train_end()


# ---------------------------------------------------------------------- stock CLIs
def test_cli_train_resume_predict(dataset_2d, nnunet_env, tmp_path):
    """One epoch as nnUNetv2_train runs it, in process and without its final validation; then the stock commands:
    nnUNetv2_train --c and nnUNetv2_predict with the default choice (the ensemble); every choice predicts as
    nnUNetv2_predict loads it, 2D and 3D, in process: tests/test_contract.py."""
    folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset801_T2D", f"{DUALNET}__nnUNetPlans__2d", "fold_1")
    train_in_process("801", "2d", "1", DUALNET, validate=False, nnUNet_ssl_epochs=1)
    run_cli("nnUNetv2_train", "801", "2d", "1", "-tr", DUALNET, "-device", "cpu", "--c",
            env={"nnUNet_ssl_epochs": "2"})
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert "Epoch 1" in log and "Epoch 0" not in log
    assert all(key in log for key in ("cps_loss_b", "kl_loss", "proto_loss", "ignored_fraction", "a_wins"))
    assert "Final validation with the ensemble weights" in log
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and sorted(checkpoint["optimizer_states"]) == ["a", "b"]
    assert sorted(checkpoint["inference_choices"]) == ["a", "b", "ensemble"]
    assert os.path.isfile(os.path.join(folder, "progress_ssl.png"))
    predict_test_set_2d(dataset_2d, tmp_path / "ensemble", DUALNET, fold="1")
