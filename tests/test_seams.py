"""The core's building blocks on small modules: EMA by name, warm start and buffers; MC dropout; multi-output
networks and their mix; dropout as a network option; phases; inference choices in a checkpoint."""
import copy

import pytest
import torch
from torch import nn

from nnunet_ssl.architectures.dropout import Dropout, dropout_layers, insert_dropout
from nnunet_ssl.architectures.multi_output import MultiHeadNetwork, NetworkEnsemble, mix_outputs
from nnunet_ssl.core.checkpoints import InferenceChoice, compose_weights
from nnunet_ssl.core.phases import Phase, PhasePolyLR, check_phase_starts, phase_starts
from nnunet_ssl.core.teachers import EMATeacher, dropout_only, mc_dropout_probabilities


def unet(seed=0, deep_supervision=True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    torch.manual_seed(seed)
    return PlainConvUNet(3, 3, (4, 8, 8), nn.Conv2d, 3, (1, 2, 2), 1, 2, (1, 1), conv_bias=True,
                         norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
                         deep_supervision=deep_supervision)


# ---------------------------------------------------------------------- EMA teacher
def test_ema_pairs_by_name_and_refuses_another_architecture():
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    teacher = EMATeacher(student, 0.5)
    shuffled = nn.Sequential(nn.Linear(4, 2), nn.Linear(3, 4))  # same parameter shapes in another order
    with pytest.raises(ValueError, match="differ in shape"):
        teacher.update(shuffled)
    with pytest.raises(ValueError, match="differ by name"):
        teacher.update(nn.Sequential(nn.Linear(3, 4)))


def test_ema_warm_start_follows_the_reference_code():
    student = nn.Linear(2, 1)
    teacher = EMATeacher(student, 0.99, warm_start=True)
    assert [teacher.decay_at(t) for t in (0, 1, 9, 1000)] == [0.0, 0.5, 0.9, 0.99]
    with torch.no_grad():
        student.weight.fill_(3.0)
    teacher.update(student, step=0)  # a_0 = 0: the teacher becomes the student
    torch.testing.assert_close(teacher.module.weight, student.weight)
    with pytest.raises(ValueError, match="needs the step"):
        teacher.update(student)


def test_ema_buffers_follow_the_student_and_decay_one_freezes_everything():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    follower, frozen = EMATeacher(student, 0.9), EMATeacher(student, 1.0)
    student.train()
    student(torch.randn(8, 2) * 5 + 3)  # moves the running statistics
    follower.update(student)
    frozen.update(student)
    torch.testing.assert_close(follower.module[1].running_mean, student[1].running_mean)
    assert torch.equal(frozen.module[1].running_mean, torch.zeros(2))


# ---------------------------------------------------------------------- MC dropout
def test_mc_dropout_batches_the_passes_with_dropout_only_on():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 3))
    net.eval()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(5, 4)
    mean, var = mc_dropout_probabilities(net, x, 8, lambda z: z.softmax(1))
    assert calls == [40]  # one forward of M x B
    assert mean.shape == (5, 3) and var.shape == (5, 3) and bool((var > 0).any())
    torch.testing.assert_close(mean.sum(1), torch.ones(5))
    assert not net.training and not net[2].training  # modes restored
    with dropout_only(net):
        assert net[2].training and not net[1].training  # BatchNorm keeps its running statistics
    calls.clear()
    mc_dropout_probabilities(net, x, 8, lambda z: z.softmax(1), chunk_size=16)
    assert calls == [16, 16, 8]
    with pytest.raises(ValueError, match="no dropout"):
        mc_dropout_probabilities(nn.Linear(4, 3), x, 4, lambda z: z)


# ---------------------------------------------------------------------- networks
def test_insert_dropout_where_asked_and_predicts_like_the_plain_network_in_eval():
    plain, dropped = unet(), insert_dropout(unet(), Dropout(0.2, "decoder"))
    assert len(dropout_layers(dropped)) == 2 and not dropout_layers(dropped.encoder)
    assert len(dropout_layers(insert_dropout(unet(), Dropout(0.2, "encoder")))) == 3
    for a, b in zip(plain.parameters(), dropped.parameters()):
        assert torch.equal(a, b)  # same initialisation, dropout has no parameters
    assert list(plain.state_dict()) == list(dropped.state_dict())  # checkpoints load both ways
    copied = copy.deepcopy(dropped)  # an EMA teacher's copy runs its own dropout layers
    copied.train()
    dropped.eval()
    assert dropout_layers(copied)[0].training and not dropout_layers(dropped)[0].training
    assert not torch.allclose(copied(torch.ones(1, 3, 16, 16))[0], copied(torch.ones(1, 3, 16, 16))[0])
    plain.eval(), dropped.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(plain(x)[0], dropped(x)[0])
    with pytest.raises(ValueError):
        Dropout(0.0)


def test_ensemble_forward_is_the_first_member_until_the_mix_says_otherwise():
    a, b = unet(0), unet(1)
    ensemble = NetworkEnsemble({"a": a, "b": b})
    x = torch.randn(2, 3, 16, 16)
    out = ensemble(x)
    assert isinstance(out, list) and all(torch.equal(o, r) for o, r in zip(out, a(x)))
    ensemble.output_mix.copy_(ensemble.mix_state({"a": 0.5, "b": 0.5}))
    mixed = ensemble(x)
    for level, (za, zb) in enumerate(zip(a(x), b(x))):
        torch.testing.assert_close(mixed[level].softmax(1), (za.softmax(1) + zb.softmax(1)) / 2)
    ensemble.sigmoid_outputs.fill_(True)
    torch.testing.assert_close(torch.sigmoid(ensemble(x)[0]), (torch.sigmoid(a(x)[0]) + torch.sigmoid(b(x)[0])) / 2)
    outputs = ensemble(x, all_outputs=True)
    assert set(outputs) == {"a", "b"}
    ensemble.set_deep_supervision(False)
    assert torch.is_tensor(ensemble(x)) and torch.is_tensor(a(x))
    with pytest.raises(ValueError, match="unknown outputs"):
        ensemble.mix_state({"c": 1.0})


def test_multi_head_network_gives_features_and_heads_and_mixes_full_resolution():
    backbone = unet()
    network = MultiHeadNetwork(backbone, {"aux": nn.Conv2d(4, 2, 1)})
    x = torch.randn(2, 3, 16, 16)
    outputs = network(x, all_outputs=True)
    assert outputs["features"].shape == (2, 4, 16, 16) and outputs["aux"].shape == (2, 2, 16, 16)
    torch.testing.assert_close(outputs["aux"], network.heads["aux"](outputs["features"]))
    mixed = mix_outputs([outputs["main"], outputs["aux"]], [0.5, 0.5], False)
    torch.testing.assert_close(mixed[0].softmax(1), (outputs["main"][0].softmax(1) + outputs["aux"].softmax(1)) / 2)
    assert mixed[1] is outputs["main"][1]  # lower levels: the first output's (only nnU-Net's validation loss)


def test_residual_encoder_network_matches_the_plans_outputs():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ssl.architectures.plans import residual_encoder_network
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv2d",
                            "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    plans = {"dataset_name": "D", "plans_name": "P", "original_median_spacing_after_transp": [1, 1, 1],
             "original_median_shape_after_transp": [1, 16, 16], "image_reader_writer": "NaturalImage2DIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
             "configurations": {"2d": {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor",
                                       "batch_size": 2, "patch_size": [16, 16], "spacing": [1, 1],
                                       "architecture": arch}},
             "experiment_planner_used": "x", "foreground_intensity_properties_per_channel": {}}
    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration("2d")
    plain = nnUNetTrainer.build_network_architecture(plans_manager, cm, 3, 2, True)
    residual = residual_encoder_network(cm, 3, 2, True)
    assert type(residual).__name__ == "ResidualEncoderUNet"
    assert [len(s.blocks) for s in residual.encoder.stages] == [1, 3, 4]
    x = torch.randn(1, 3, 16, 16)
    assert [o.shape for o in plain(x)] == [o.shape for o in residual(x)]


# ---------------------------------------------------------------------- phases, inference choices
def test_phase_starts_match_the_self_training_rounds():
    for epochs in (4, 10, 37):
        for rounds in (1, 2, 3):
            first = round(0.5 * epochs)
            expected = [0] + [first + k * (epochs - first) // rounds for k in range(rounds)]
            assert phase_starts([0.5] + [0.5 / rounds] * rounds, epochs) == expected
    assert phase_starts([1.0], 10) == [0]
    with pytest.raises(ValueError, match="at least one epoch"):
        check_phase_starts(phase_starts([0.5, 0.25, 0.25], 2), 2, [Phase("a", .5), Phase("b", .25), Phase("c", .25)])


def test_phase_poly_lr_restarts_at_each_bound():
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.01)
    scheduler = PhasePolyLR(optimizer, 0.01, [0, 4, 10])
    lrs = []
    for epoch in range(10):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == lrs[4] == 0.01 and lrs[3] < lrs[2] < lrs[1] < 0.01 and lrs[9] < lrs[5]


def test_compose_weights_sets_the_mix_and_shares_tensors():
    weights = {"student": {"w": torch.ones(2), "output_mix": torch.tensor([1.0, 0.0])}}
    state = compose_weights(weights, InferenceChoice("student", (0.5, 0.5)))
    assert state["w"] is weights["student"]["w"] and state["output_mix"].tolist() == [0.5, 0.5]
    assert weights["student"]["output_mix"].tolist() == [1.0, 0.0]
    with pytest.raises(KeyError):
        compose_weights(weights, InferenceChoice("teacher"))
    with pytest.raises(KeyError, match="multi-output"):
        compose_weights({"student": {"w": torch.ones(2)}}, InferenceChoice("student", (1.0,)))
