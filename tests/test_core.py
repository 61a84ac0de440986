"""Unit tests of the shared SSL mechanics: ramp-up, EMA teacher, consistency loss."""
import math

import numpy as np

import pytest
import torch
from torch import nn

from nnunet_ssl.core.teachers import EMATeacher
from nnunet_ssl.components.losses import consistency_mse
from nnunet_ssl.components.ramps import gaussian_rampup


def test_gaussian_rampup_values():
    assert gaussian_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert gaussian_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert gaussian_rampup(100, 100) == 1.0
    assert gaussian_rampup(1000, 100) == 1.0
    assert gaussian_rampup(3, 0) == 1.0
    values = [gaussian_rampup(t, 100) for t in range(101)]
    assert all(a < b for a, b in zip(values, values[1:]))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.Dropout(0.5),
                         nn.Conv2d(4, 2, 1))


def test_ema_update_is_exact_moving_average():
    student = _net()
    teacher = EMATeacher(student, decay=0.9)
    before = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student)
    for t_old, t_new, s in zip(before, teacher.module.parameters(), student.parameters()):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s)


def test_ema_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = EMATeacher(_net(), 0.99)
    teacher.train()
    assert not teacher.module.training and not any(m.training for m in teacher.module.modules())
    assert not any(p.requires_grad for p in teacher.module.parameters())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(teacher(x), teacher(x))  # dropout off: deterministic targets


def test_ema_decay_one_keeps_teacher_and_zero_copies_student():
    student = _net()
    frozen, follower = EMATeacher(student, 1.0), EMATeacher(student, 0.0)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(2.0).add_(0.5)
    frozen.update(student)
    follower.update(student)
    for f, s in zip(follower.module.parameters(), student.parameters()):
        torch.testing.assert_close(f, s)
    assert any(not torch.equal(f, s) for f, s in zip(frozen.module.parameters(), student.parameters()))
    with pytest.raises(ValueError):
        EMATeacher(student, 1.5)


def test_consistency_gradient_reaches_student_not_teacher():
    student = _net()
    teacher = EMATeacher(student, 0.99)
    with torch.no_grad():  # make teacher and student differ, so the loss is not trivially 0
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        target = torch.softmax(teacher(x), 1)
    loss = consistency_mse(torch.softmax(student(x), 1), target)
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is not None for p in student.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters()) > 0
    assert all(p.grad is None for p in teacher.module.parameters())


def test_consistency_refuses_teacher_target_with_graph():
    student = _net()
    x = torch.randn(1, 1, 4, 4)
    p = torch.softmax(student(x), 1)
    with pytest.raises(ValueError, match="no_grad"):
        consistency_mse(p, p)


def test_consistency_value_is_mean_squared_difference():
    a = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert consistency_mse(a, b).item() == pytest.approx((0.04 + 0.04 + 0.25 + 0.25) / 4)


def test_ssl_progress_plot_has_a_panel_for_losses_and_one_for_weights(tmp_path):
    from PIL import Image

    from nnunet_ssl.core.progress import plot_ssl_progress

    logged = {"sup_loss": [0.9, 0.6, 0.4], "consistency_loss": [0.01, 0.03, 0.02], "consistency_weight": [0.0, 0.3, 1.0]}
    out = tmp_path / "progress_ssl.png"
    plot_ssl_progress(logged, ["sup_loss", "consistency_loss"], ["consistency_weight"], str(out), "nnUNetTrainerX")
    two = np.asarray(Image.open(out).convert("L"), dtype=float)
    plot_ssl_progress(logged, ["sup_loss", "consistency_loss"], [], str(out))
    one = np.asarray(Image.open(out).convert("L"), dtype=float)
    assert two.shape[0] > 1.8 * one.shape[0] and two.std() > 10  # two panels, and drawn on
    assert not list(tmp_path.glob("*.tmp.png"))
