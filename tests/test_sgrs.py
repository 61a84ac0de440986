"""nnUNetTrainerSGRS: gradients of each unsupervised term, memory modes, edge regions, and the stock CLIs."""
import glob
import os

import numpy as np
import pytest
import torch

from conftest import predict_test_set_2d, train_in_process
from test_mean_teacher import make_trainer

SGRS = "nnUNetTrainerSGRS"


def _trainer(name=SGRS, **settings):
    torch.manual_seed(0)
    trainer = make_trainer(name)
    for k, v in settings.items():
        setattr(trainer, k, v)
    trainer.on_train_start()
    trainer.warmup_fraction = 0.0  # lambda = 1 from the first step
    trainer.teacher.update(trainer.network, step=1000)  # teacher != initial student, as after some training
    with torch.no_grad():
        for p in trainer.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.loss = lambda output, target: 0.0 * output[0].sum()  # isolate the unsupervised terms
    return trainer


def _student_grad(trainer):
    return sum(p.grad.abs().sum().item() for p in trainer.network.parameters() if p.grad is not None)


@pytest.mark.parametrize("mode,term", [("con_everywhere", "con_loss"), ("nr_everywhere", "nr_loss")])
@pytest.mark.parametrize("low_memory,dice", [(False, "joint"), (True, "joint"), (False, "per_class")])
def test_each_unsupervised_term_trains_student_never_teacher(dataset_2d, mode, term, low_memory, dice):
    trainer = _trainer(regions_mode=mode, low_memory=low_memory, regional_dice=dice)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.step = lambda: None  # keep the gradients for inspection
    out = trainer.train_step(next(trainer.dataloader_train))
    other = "nr_loss" if term == "con_loss" else "con_loss"
    assert out[term] > 0 and out[other] == 0 and float(out["sup_loss"]) == 0
    assert _student_grad(trainer) > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k])
    trainer.on_train_end()


def test_zero_weight_sends_no_gradient(dataset_2d):
    """The check above can fail: with lambda = 0 the same step leaves the student without gradient."""
    trainer = _trainer(regions_mode="con_everywhere", unsupervised_weight=0.0)
    trainer.step = lambda: None
    out = trainer.train_step(next(trainer.dataloader_train))
    assert out["con_loss"] > 0 and _student_grad(trainer) == 0
    trainer.on_train_end()


@pytest.mark.parametrize("noise", [None, (0.1, 0.2)])
def test_teacher_sees_the_unlabeled_batch_with_the_codes_clipped_noise_only_when_asked(dataset_2d, noise):
    trainer = _trainer(teacher_noise=noise)
    trainer.step = lambda: None
    seen, teacher_probabilities = [], trainer.teacher_probabilities
    trainer.teacher_probabilities = lambda x: seen.append(x) or teacher_probabilities(x)
    x_u = trainer.unlabeled_batch().clone()
    trainer.unlabeled_batch = lambda: x_u
    trainer.train_step(next(trainer.dataloader_train))
    difference = (seen[0] - x_u).abs()
    if noise is None:
        assert torch.equal(seen[0], x_u)
    else:
        assert 0 < difference.max() <= 0.2 + 1e-6 and difference.std() > 0.03  # clipped at 0.2, std about 0.1
    trainer.on_train_end()


def test_low_memory_gives_the_joint_gradient(dataset_2d):
    grads = []
    batch = None
    for low_memory in (False, True):
        trainer = _trainer(low_memory=low_memory)
        if batch is None:
            batch, x_u = next(trainer.dataloader_train), trainer.unlabeled_batch()
        trainer.unlabeled_batch = lambda: x_u.clone()
        trainer.step = lambda: None
        np.random.seed(3)  # the same mix-up lambda
        out = trainer.train_step({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        grads.append(([None if p.grad is None else p.grad.clone() for p in trainer.network.parameters()], out))
        trainer.on_train_end()
    (g_joint, out_joint), (g_low, out_low) = grads
    assert out_joint["omega"] == out_low["omega"] and out_joint["theta"] == out_low["theta"]
    assert out_joint["con_loss"] == pytest.approx(out_low["con_loss"], rel=1e-5)
    assert sum(a is not None for a in g_joint) > 0
    for a, b in zip(g_joint, g_low):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("settings,expect", [({"min_confidence": 1.0}, "all_delta"),
                                              ({"min_confidence": 0.0}, "no_delta"),
                                              ({"disregard_rule": "normalized_entropy", "tau": 0.0}, "all_delta"),
                                              ({"disregard_rule": "normalized_entropy", "tau": 1.0}, "no_delta")])
def test_edge_regions_stay_finite(dataset_2d, settings, expect):
    trainer = _trainer(**settings)
    trainer.step = lambda: None
    out = trainer.train_step(next(trainer.dataloader_train))
    assert all(np.isfinite(float(out[k])) for k in ("loss", "con_loss", "nr_loss"))
    assert out["delta"] + out["omega"] + out["theta"] == pytest.approx(1.0)
    if expect == "all_delta":  # softmax outputs are never exactly one-hot: every voxel is disregarded
        assert out["delta"] == 1.0 and out["con_loss"] == 0 and out["nr_loss"] == 0
        assert _student_grad(trainer) == 0
    else:
        assert out["delta"] == 0.0 and _student_grad(trainer) > 0
    trainer.on_train_end()


def test_no_ma_ablation_flips_back_onto_the_unlabeled_voxels(dataset_2d):
    trainer = make_trainer("nnUNetTrainerSGRS_NoMA")
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    x_m, to_u = trainer.mixed_view(x, None)
    assert not torch.equal(x_m, x) and torch.equal(to_u(x_m), x)


def _model_folder(nnunet_env, dataset, configuration, fold, trainer=SGRS):
    return os.path.join(nnunet_env["nnUNet_results"], dataset, f"{trainer}__nnUNetPlans__{configuration}", f"fold_{fold}")


def test_train_predict_leaderboard_as_the_stock_clis_do(dataset_2d, nnunet_env, tmp_path, capsys):
    """nnUNetv2_train and nnUNetv2_predict as those commands run once they have parsed their arguments, in process
    (the commands themselves, for a teacher-student trainer: tests/test_mirau.py), then the leaderboard."""
    from nnunet_ssl.commands.cli import main

    train_in_process("801", "2d", "0", SGRS)
    folder = _model_folder(nnunet_env, "Dataset801_T2D", "2d", 0)
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    for key in ("sup_loss", "con_loss", "nr_loss", "lambda", "delta", "omega", "theta"):
        assert key in log
    # (--c for every nnUNetTrainerSSL: test_mean_teacher's CLI test)
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), weights_only=False)
    assert len(checkpoint["logging"]["omega"]) == 2 and "teacher" in checkpoint["ssl_weights"]
    out = tmp_path / "pred"
    predict_test_set_2d(dataset_2d, out, SGRS, in_process=True)

    # the leaderboard reads the real fold: fold 0 evaluated, folds 1-3 (leave-one-out of 4) reported missing
    board = tmp_path / "board"
    capsys.readouterr()
    main(["leaderboard", "-d", "801", "-c", "2d", "-tr", SGRS, "-o", str(board), "-np", "1"])
    row = next(line for line in capsys.readouterr().out.splitlines() if SGRS in line)
    assert "cross-validation, missing folds 1 2 3 | 1 |" in row
    assert not os.path.exists(os.path.join(folder, "validation", "summary_ssl.json"))  # nothing written there
    assert os.path.isfile(board / "summaries" / "Dataset801_T2D" / f"{SGRS}__nnUNetPlans__2d" / "fold_0" /
                          "validation" / "summary_ssl.json")
