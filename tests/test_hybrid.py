"""The hybrid CNN-Transformer student (architectures/hybrid.py): shapes against the plans' PlainConvUNet in 2D and
3D, windows and shifted-window masks against a brute-force reference, gradients, dropout, nnU-Net's predictor
path, memory at PH2's 2D plan and the 3D refusal."""
import copy

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_ssl.architectures.common import set_deep_supervision
from nnunet_ssl.architectures.dropout import Dropout, dropout_layers, insert_dropout
from nnunet_ssl.architectures.hybrid import (CrossAttentionFusion, TransformerBlock, build_hybrid_network,
                                             check_hybrid_fits, estimate_training_bytes, window_and_shift,
                                             window_partition, window_reverse, windowed_attention)

# nnU-Net 2.8's 2d plan of PH2 as `nnunet_ssl convert ph2 ... --max-size 128` gives it (patch 96 x 128, batch 2)
PH2_PLANS = {
    "dataset_name": "Dataset601_PH2", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [999.0, 1.0, 1.0], "original_median_shape_after_transp": [1, 96, 128],
    "image_reader_writer": "NaturalImage2DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {
        str(c): {"max": 250.0, "mean": 120.0, "median": 118.0, "min": 17.0, "percentile_00_5": 30.0,
                 "percentile_99_5": 245.0, "std": 30.0} for c in range(3)},
    "configurations": {"2d": {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [96, 128], "median_image_size_in_voxels": [96.0, 128.0], "spacing": [1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"] * 3, "use_mask_for_norm": [False] * 3,
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 512],
                            "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 5,
                            "strides": [[1, 1]] + [[2, 2]] * 4, "n_conv_per_stage": [2] * 5,
                            "n_conv_per_stage_decoder": [2] * 4, "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True}},
}
PH2_DATASET = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "lesion": 1},
               "numTraining": 4, "file_ending": ".png"}


def configuration(patch, features, strides, batch_size=2, n_conv=2):
    """A plans configuration (PlainConvUNet, instance norm, LeakyReLU) of the plans' dimensionality."""
    dim = len(patch)
    config = copy.deepcopy(PH2_PLANS["configurations"]["2d"])
    kwargs = config["architecture"]["arch_kwargs"]
    n = len(features)
    kwargs.update(n_stages=n, features_per_stage=list(features), kernel_sizes=[[3] * dim] * n,
                  strides=[list(s) for s in strides], n_conv_per_stage=[n_conv] * n,
                  n_conv_per_stage_decoder=[n_conv] * (n - 1), conv_op=f"torch.nn.modules.conv.Conv{dim}d",
                  norm_op=f"torch.nn.modules.instancenorm.InstanceNorm{dim}d")
    config.update(patch_size=list(patch), batch_size=batch_size)
    return ConfigurationManager(config)


PH2 = ConfigurationManager(PH2_PLANS["configurations"]["2d"])
SMALL_2D = configuration((64, 64), (8, 16, 32, 64), [(1, 1)] + [(2, 2)] * 3)  # windowed at 32^2, global below
# anisotropic 3D: stage 1 is 24 x 20 x 24 (windowed, padded 20 -> 24, shifted), stages 2-3 global
SMALL_3D = configuration((24, 40, 48), (4, 8, 16, 32), [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)], n_conv=1)
# nnU-Net's usual 3d_fullres plan
FULLRES_3D = configuration((128, 128, 128), (32, 64, 128, 256, 320, 320), [(1, 1, 1)] + [(2, 2, 2)] * 5)


def plain_unet(cm, in_channels, classes):
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, in_channels, classes,
                                  deep_supervision=True)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads spin and run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shapes(outputs):
    return [tuple(o.shape) for o in outputs]


@pytest.mark.parametrize("cm, in_channels", [(SMALL_2D, 3), (SMALL_3D, 1)], ids=["2d", "3d"])
def test_outputs_match_the_plans_unet_and_deep_supervision_switches(cm, in_channels):
    hybrid = build_hybrid_network(cm, in_channels, 2, deep_supervision=True)
    x = torch.randn(1, in_channels, *cm.patch_size)
    with torch.no_grad():
        expected = shapes(plain_unet(cm, in_channels, 2)(x))
        assert shapes(hybrid(x)) == expected  # full resolution first, one output per decoder stage
        set_deep_supervision(hybrid, False)
        single = hybrid(x)
    assert torch.is_tensor(single) and tuple(single.shape) == expected[0]
    assert hybrid.decoder.seg_layers[-1].out_channels == 2 and hybrid.decoder.seg_layers[-1].kernel_size == (1,) * (
        len(cm.patch_size))
    blocks = [m for m in hybrid.modules() if isinstance(m, TransformerBlock)]
    fusions = [m for m in hybrid.modules() if isinstance(m, CrossAttentionFusion)]
    n = len(cm.network_arch_init_kwargs["features_per_stage"])
    assert hybrid.transformer_stages == (1, 2, 3)  # 2D: 32^2 windowed, 16^2 and 8^2 global; 3D: see SMALL_3D
    assert len(blocks) == 2 * len(hybrid.transformer_stages) and len(fusions) == n - 1


def test_ph2_plan_stages_windows_and_heads():
    hybrid = build_hybrid_network(PH2, 3, 2)
    assert hybrid.transformer_stages == (2, 3, 4)  # 24 x 32 windowed; 12 x 16 and 6 x 8 global
    assert hybrid.fusion_stages == (0, 1, 2, 3)  # every skip, 96 x 128 down to 12 x 16
    heads = [m.attention.heads for m in hybrid.encoder.modules() if isinstance(m, TransformerBlock)]
    assert heads == [4, 4, 8, 8, 16, 16]
    assert [b.shifted for b in hybrid.encoder.stages[2] if isinstance(b, TransformerBlock)] == [False, True]


def test_window_and_shift_rule():
    assert window_and_shift((12, 16), True) == ((12, 16), (0, 0))  # global
    assert window_and_shift((24, 32), True) == ((8, 8), (4, 4))
    assert window_and_shift((24, 32), False) == ((8, 8), (0, 0))
    assert window_and_shift((6, 40), True) == ((6, 8), (0, 4))  # the window covers the short axis: no shift there
    assert window_and_shift((24, 20, 24), True) == ((8, 8, 8), (4, 4, 4))


@pytest.mark.parametrize("spatial, window", [((6, 8), (3, 4)), ((4, 6, 8), (2, 3, 4))])
def test_window_partition_round_trip(spatial, window):
    x = torch.randn(2, *spatial, 5)
    windows = window_partition(x, window)
    assert windows.shape == (2 * (torch.tensor(spatial) // torch.tensor(window)).prod().item(),
                             torch.tensor(window).prod().item(), 5)
    # the first window holds the first window[i] positions of every axis of the first image, in raster order
    assert torch.equal(windows[0], x[(0, *(slice(0, w) for w in window))].reshape(-1, 5))
    assert torch.equal(window_reverse(windows, window, spatial), x)


def reference_attention(q, k, v, heads, window, shift):
    """Attention over the whole (unpadded) map with an explicit mask: a query sees the keys of its own window of
    the grid shifted by `shift` (Swin's shifted windows on the unrolled map; border windows are cut, not wrapped)."""
    b, *spatial, c = q.shape
    grids = torch.meshgrid(*[torch.arange(s) for s in spatial], indexing="ij")
    window_id = torch.stack([(g + w - d) // w for g, w, d in zip(grids, window, shift)], -1).reshape(-1, len(spatial))
    allowed = (window_id[:, None, :] == window_id[None, :, :]).all(-1)
    split = [t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v)]
    scores = split[0] @ split[1].transpose(-1, -2) / (c // heads) ** 0.5
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ split[2]
    return out.transpose(1, 2).reshape(b, *spatial, c)


@pytest.mark.parametrize("spatial, window, shift", [
    ((16, 24), (8, 8), (4, 4)),  # shifted windows, Swin's mask
    ((10, 20), (4, 8), (2, 4)),  # padded (10 -> 12, 20 -> 24) and shifted
    ((16, 24), (8, 8), (0, 0)),  # plain windows
    ((4, 6, 10), (2, 4, 4), (1, 2, 2)),  # 3D, padded and shifted
])
def test_windowed_attention_matches_masked_reference(spatial, window, shift):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, *spatial, 8, dtype=torch.float64) for _ in range(3))
    out = windowed_attention(q, k, v, 2, window, shift)
    assert torch.allclose(out, reference_attention(q, k, v, 2, window, shift), atol=1e-10)


def test_whole_map_window_is_global_attention_and_shift_matters():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 8, 12, 8, dtype=torch.float64) for _ in range(3))
    global_attention = torch.nn.functional.scaled_dot_product_attention(
        *(t.reshape(2, -1, 2, 4).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(2, 8, 12, 8)
    assert torch.allclose(windowed_attention(q, k, v, 2, (8, 12), (0, 0)), global_attention, atol=1e-10)
    # a window of the whole map with Swin's shift mask is not global: tokens rolled in from the far border are cut
    shifted = windowed_attention(q, k, v, 2, (8, 12), (4, 6))
    assert not torch.allclose(shifted, global_attention, atol=1e-3)
    assert torch.allclose(shifted, reference_attention(q, k, v, 2, (8, 12), (4, 6)), atol=1e-10)


def test_shifted_block_equals_timms_swin_block():
    """In 2D the block is timm's SwinTransformerBlock (shifted windows, Swin's mask) without the relative
    position bias: same weights, same output."""
    from timm.models.swin_transformer import SwinTransformerBlock
    torch.manual_seed(0)
    c = 16
    swin = SwinTransformerBlock(c, (16, 24), num_heads=2, window_size=8, shift_size=4).double().eval()
    ours = TransformerBlock(c, 2, shifted=True).double().eval()
    with torch.no_grad():
        swin.attn.relative_position_bias_table.zero_()
        ours.attention.q.weight.copy_(swin.attn.qkv.weight[:c])
        ours.attention.q.bias.copy_(swin.attn.qkv.bias[:c])
        ours.attention.kv.weight.copy_(swin.attn.qkv.weight[c:])
        ours.attention.kv.bias.copy_(swin.attn.qkv.bias[c:])
        for mine, theirs in [(ours.attention.proj, swin.attn.proj), (ours.norm1, swin.norm1),
                             (ours.norm2, swin.norm2), (ours.mlp[0], swin.mlp.fc1), (ours.mlp[2], swin.mlp.fc2)]:
            mine.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 16, 24, c, dtype=torch.float64)
        assert torch.allclose(ours(x.movedim(-1, 1)).movedim(1, -1), swin(x), atol=1e-10)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    hybrid = build_hybrid_network(SMALL_2D, 1, 3, deep_supervision=True)
    outputs = hybrid(torch.randn(2, 1, 64, 64))
    sum((o * torch.randn_like(o)).sum() for o in outputs).backward()
    missing = [n for n, p in hybrid.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_insert_dropout_reaches_the_conv_blocks():
    hybrid = build_hybrid_network(SMALL_2D, 1, 2, deep_supervision=False)
    insert_dropout(hybrid, Dropout(0.2, "all"))
    n_blocks = 4 * 2 + 3 * 2  # encoder: 4 stages x 2 convs; decoder: 3 stages x 2 convs
    assert len(dropout_layers(hybrid)) == n_blocks
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert not torch.equal(hybrid(x), hybrid(x))  # dropout on in train mode
        hybrid.eval()
        assert torch.equal(hybrid(x), hybrid(x))


TEST_TRAINER = '''
from nnunet_ssl.architectures.dropout import Dropout, insert_dropout
from nnunet_ssl.architectures.hybrid import build_hybrid_network
from nnunet_ssl.core.trainer import nnUNetTrainerSSL


class nnUNetTrainerHybridTest(nnUNetTrainerSSL):
    """What nnUNetTrainerMIRAU_Hybrid does to the network: the hybrid student with decoder dropout."""
    network_dropout = Dropout(0.1, "decoder")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        network = build_hybrid_network(configuration_manager, num_input_channels, num_output_channels,
                                       enable_deep_supervision)
        return insert_dropout(network, cls.network_dropout)
'''


def test_nnunet_predictor_builds_loads_and_predicts(tmp_path, monkeypatch):
    """nnUNetv2_predict's path: the trainer found by name on nnUNet_extTrainer, its build_network_architecture
    (deep supervision off), a strict load of the checkpoint's weights, sliding-window prediction."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    trainers = tmp_path / "trainers"
    trainers.mkdir()
    (trainers / "nnUNetTrainerHybridTest.py").write_text(TEST_TRAINER)
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers))
    monkeypatch.syspath_prepend(str(trainers))
    from nnUNetTrainerHybridTest import nnUNetTrainerHybridTest  # noqa: E402

    plans = copy.deepcopy(PH2_PLANS)
    plans["configurations"]["2d"]["patch_size"] = [64, 64]  # a smaller patch for speed; 4 stages to 8 x 8
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"].update(
        n_stages=4, features_per_stage=[8, 16, 32, 64], kernel_sizes=[[3, 3]] * 4, strides=[[1, 1]] + [[2, 2]] * 3,
        n_conv_per_stage=[2] * 4, n_conv_per_stage_decoder=[2] * 3)
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    save_json(plans, str(model / "plans.json"))
    save_json(PH2_DATASET, str(model / "dataset.json"))
    pm = PlansManager(plans)
    trained = nnUNetTrainerHybridTest.build_network_architecture(pm, pm.get_configuration("2d"), 3, 2, True)
    torch.save({"trainer_name": "nnUNetTrainerHybridTest", "init_args": {"configuration": "2d"},
                "inference_allowed_mirroring_axes": (0, 1), "network_weights": trained.state_dict()},
               model / "fold_0" / "checkpoint_final.pth")

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
    network = predictor.network
    assert network.decoder.deep_supervision is False and len(dropout_layers(network)) == 3 * 2
    network.load_state_dict(predictor.list_of_parameters[0], strict=True)
    image = torch.randn(3, 1, 80, 72)  # (channels, 1 slice, x, y): two tiles per axis
    logits = predictor.predict_sliding_window_return_logits(image)
    assert logits.shape == (2, 1, 80, 72) and torch.isfinite(logits).all()
    # the predictor's network is the trained one: same logits on one patch, both in eval mode
    trained.eval(), network.eval()
    set_deep_supervision(trained, False)
    patch = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(trained(patch), network(patch))


def _resident_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) * 1024


def _measure_step(cm, in_channels, classes):
    """In a fresh process: the resident memory a forward+backward+SGD step adds on top of the built network (the
    high-water mark reset to the current resident set first, /proc/self/clear_refs), and the output shapes."""
    network = build_hybrid_network(cm, in_channels, classes, True)
    optimizer = torch.optim.SGD(network.parameters(), 0.01, momentum=0.99, nesterov=True)
    x = torch.randn(cm.batch_size, in_channels, *cm.patch_size)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := the current resident set
    before = _resident_bytes("VmRSS")
    outputs = network(x)
    sum(o.square().mean() for o in outputs).backward()
    optimizer.step()
    peak = _resident_bytes("VmHWM")
    return {"step_bytes": peak - before, "shapes": [list(o.shape) for o in outputs]}


def in_fresh_process(function, *args):
    """function(*args) in a new interpreter (multiprocessing "spawn"), not a fork: a forked child of a long test
    session reuses the parent's freed but resident heap, so a step's allocations would barely raise its resident
    set (the full suite measured 92 MB where a fresh process measures about 300)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def test_memory_of_a_training_step_at_the_ph2_plan():
    """The estimate against the peak resident memory of a real forward+backward+SGD step at PH2's 2d plan (weights
    already allocated, so the step adds gradients, momentum and what autograd keeps)."""
    estimate = check_hybrid_fits(PH2, PH2.batch_size)  # 2D is built without the check; it passes anyway
    result = in_fresh_process(_measure_step, PH2, 3, 2)
    assert result["shapes"] == [[2, 2, 96, 128], [2, 2, 48, 64], [2, 2, 24, 32], [2, 2, 12, 16]]  # as PlainConvUNet's
    measured = result["step_bytes"]
    print(f"PH2 2d (patch 96x128, batch 2): estimate {estimate / 1e6:.0f} MB, measured step {measured / 1e6:.0f} MB")
    assert 100e6 < measured < estimate < 3 * measured  # an upper bound, not a wild one
    assert estimate < 1e9  # far from the 24 GB of a CPU machine


def test_3d_builds_where_a_step_fits_and_is_refused_with_the_numbers_otherwise():
    assert estimate_training_bytes(SMALL_3D, 2, 1, 2) < 1e9  # small 3D plans build (see the shapes test)
    # nnU-Net's usual 3d_fullres plan (128^3, batch 2) fits a 24 GB machine ...
    assert 10e9 < check_hybrid_fits(FULLRES_3D, 2, num_input_channels=1) < 24e9
    # ... twice its batch (what a trainer with labeled + unlabeled batches of 2 feeds) does not
    with pytest.raises(MemoryError, match=r"3D hybrid CNN-Transformer needs about \d+\.\d GB for patch "
                                          r"128x128x128 and batch 4.*cross_attention_max_side=32\) it would need "
                                          r"about \d+\.\d GB"):
        build_hybrid_network(FULLRES_3D, 1, 2, batch_size=4)
    with pytest.raises(MemoryError, match="more than the 1 GB"):
        check_hybrid_fits(SMALL_3D, 64, budget_bytes=10 ** 9, num_input_channels=1)
