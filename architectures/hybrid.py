"""MIRA-U's hybrid CNN-Transformer student (Qamar, "Confidence-Weighted SSL for Skin Lesion Segmentation", §3.2),
built from nnU-Net's plans, 2D and 3D, so that it trains and predicts wherever the plans' PlainConvUNet does.

    encoder  the plans' PlainConvEncoder (stages, features, kernels, strides, convs per stage, norm, nonlinearity,
             dropout_op): each stage's StackedConvBlocks, then, at the deeper stages, `transformer_depth` blocks
             x = x + WMSA(LN(x)); x = x + MLP(LN(x))   (pre-norm, MLP ratio 4, GELU)
    decoder  nnU-Net's UNetDecoder (transposed conv, concatenation with the skip, the plans' conv blocks, 1x1 seg
             layers, deep supervision), with the upsampled decoder features first fused with the skip by
             x = x + WMCA(LN(x), LN(skip))   (queries from the decoder, keys and values from the encoder skip)

Outputs and deep-supervision levels are those of the plans' PlainConvUNet (a list, full resolution first, or one
tensor), `decoder.deep_supervision` switches them, `decoder.seg_layers[-1]` is the final 1x1 conv, conv blocks are
ConvDropoutNormReLU in `encoder` and `decoder.stages` (architectures.dropout.insert_dropout works), `encoder`
carries conv_op/norm_op/nonlin (architectures.aspp.ops_of works).

Design decisions (paper [P], authors' code [C], ours [D]; see papers/reference-code-notes.md §3b):
- Which stages get transformer blocks [D]: every stage but the first (the stem, [P]) whose feature map at the
  plans' patch size is at most `transformer_max_side` (32) per axis: the "levels >= 32^2 windowed, 16^2 global"
  of the notes at nnU-Net's deeper resolutions. PH2's 2D plan (patch 96 x 128, 5 stages) gets them at 24 x 32
  (windowed), 12 x 16 and 6 x 8 (global). [P] also has blocks at 128^2 and 64^2 of its 256^2 input; raise
  `transformer_max_side` for that. `transformer_depth` = 2 blocks per stage [D] (C2: 1 per stage, 2 at the
  bottleneck), so the every-second-block shift happens in each windowed stage.
- Windows [P, Swin]: 8 per axis (min(8, side)), the second block of each pair shifted by window // 2 with
  torch.roll and Swin's attention mask (tokens that the roll brought together from opposite borders do not
  attend to each other): exact Swin, not the no-mask simplification. A map that is not a multiple of the window
  is zero-padded and padded keys are masked. Where the whole map is at most GLOBAL_MAX_SIDE (16) per axis
  attention is global (one window = the map, no shift). Fixes defect (v) of the authors' code (global attention
  everywhere). No relative position bias [D]: the conv stages before every block give position information.
  One N-D implementation serves 2D, 3D and the cross-attention (timm's SwinTransformerBlock is 2D,
  self-attention only and fixed to one input resolution); in 2D a block equals timm's with a zero relative
  position bias (tested).
- Heads: channels // 32, at least 1 [D]. Attention: torch's scaled_dot_product_attention (flash kernel on CPU).
- Cross-attention skip fusion [P] at every decoder level (`cross_attention_max_side`=None) [P: all four of C2's
  levels], in 8-per-axis windows (no shift: the windows of queries and keys coincide) or global where the map is
  at most 16 per axis; a residual on the decoder features, then concatenation with the skip and the plans' conv
  block, as nnU-Net's decoder. Windowed cross-attention is linear in the number of voxels (64 keys per query in
  2D), so it is affordable at full resolution in 2D; in 3D (512 keys per query) it dominates the
  memory, which is what the 3D memory check finds.
- The plans' norm (instance norm) and LeakyReLU stay in the conv blocks [D]; [P] uses GroupNorm and GELU.
  Initialisation: nnU-Net's He init for convs, Swin's truncated normal (std 0.02) for linear layers.
- 3D [D]: supported, and built when a float32 training step at the plans' patch and batch fits a 24 GB CPU
  machine (`check_hybrid_fits`), refused with a MemoryError that gives the estimate otherwise (and what
  cross-attention only at maps <= 32 per axis would need). The estimate: what autograd keeps for the backward of
  one forward pass, counted on the meta device (nothing computed, each storage once; attention counted as a
  flash kernel keeps it, without the attention matrix: torch's CPU kernel is a flash kernel), plus four copies of
  the parameters (weights, gradients, SGD momentum, an EMA teacher). Against the resident memory a real step
  adds: PH2's 2D plan 416 MB estimated / 306 MB measured; 3D 64^3, batch 1, 5 stages 1593 / 1488 MB.
  nnU-Net's usual 3d_fullres plan (patch 128^3, batch 2, 6 stages to 320 features; 38.9M parameters against
  the PlainConvUNet's 31.2M) comes to about 15 GB and builds; batch 4 (e.g. labeled + unlabeled batches of 2:
  pass `batch_size`) needs about 30 GB and is refused (about 19 GB with cross_attention_max_side=32).
"""
import math
import pydoc
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

WINDOW = 8  # tokens per axis of an attention window
GLOBAL_MAX_SIDE = 16  # global attention where the whole map is at most this per axis
TRANSFORMER_MAX_SIDE = 32  # transformer blocks at the stages whose map is at most this per axis
HEAD_CHANNELS = 32
MEMORY_BUDGET_BYTES = 24 * 10 ** 9  # a 24 GB CPU machine


# ---------------------------------------------------------------------------------------------- windows, N-D
def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *S, C) channels-last, each S_i a multiple of window_i -> (B * n_windows, prod(window), C),
    windows batch-major and in raster order."""
    b, *spatial, c = x.shape
    n = len(spatial)
    shape = [b]
    for s, w in zip(spatial, window):
        shape += [s // w, w]
    x = x.reshape(*shape, c)
    order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [2 * n + 1]
    return x.permute(order).reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of window_partition: (B * n_windows, prod(window), C) -> (B, *spatial, C)."""
    n = len(spatial)
    counts = [s // w for s, w in zip(spatial, window)]
    c = windows.shape[-1]
    x = windows.reshape(-1, *counts, *window, c)
    order = [0] + [j for i in range(n) for j in (1 + i, 1 + n + i)] + [2 * n + 1]
    return x.permute(order).reshape(-1, *spatial, c)


def window_and_shift(spatial: Sequence[int], shifted: bool, window: int = WINDOW,
                     global_max_side: int = GLOBAL_MAX_SIDE) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The window and shift per axis for a map: the whole map, unshifted, where it is at most global_max_side
    per axis; else min(window, side) per axis, shifted by half a window (on axes longer than it) if `shifted`."""
    if all(s <= global_max_side for s in spatial):
        return tuple(spatial), (0,) * len(spatial)
    win = tuple(min(window, s) for s in spatial)
    shift = tuple(w // 2 if shifted and w < s else 0 for w, s in zip(win, spatial))
    return win, shift


def _window_mask(padded: Sequence[int], spatial: Sequence[int], window: Sequence[int], shift: Sequence[int],
                 device) -> torch.Tensor:
    """(n_windows, 1, T, T) boolean mask (True: attend) for the rolled, padded map: a query attends to the keys of
    its window that lie in the same unrolled shifted window (Swin's mask) and are not padding; always to itself."""
    label = torch.zeros(padded, dtype=torch.long, device=device)
    valid = torch.ones(padded, dtype=torch.bool, device=device)
    for axis, (p, s, w, d) in enumerate(zip(padded, spatial, window, shift)):
        view = [1] * len(padded)
        view[axis] = p
        coord = torch.arange(p, device=device)
        # the shifted grid's window of each position, in original coordinates (0 for an unshifted axis)
        label = label * (p // w + 2) + ((coord + w - d) // w if d else torch.zeros_like(coord)).view(view)
        valid = valid & (coord < s).view(view)
    label = torch.roll(label, [-d for d in shift], tuple(range(len(padded))))
    valid = torch.roll(valid, [-d for d in shift], tuple(range(len(padded))))
    label = window_partition(label[None, ..., None], window)[..., 0]  # (n_windows, T)
    valid = window_partition(valid[None, ..., None], window)[..., 0]
    mask = (label[:, :, None] == label[:, None, :]) & valid[:, None, :]
    mask |= torch.eye(mask.shape[-1], dtype=torch.bool, device=device)
    return mask[:, None]


class _MetaFlashAttention(torch.autograd.Function):
    """On the meta device (memory estimates): keeps what a flash-attention kernel keeps for its backward (queries,
    keys, values, output, log-sum-exp per query, the mask as an additive float mask), not the attention matrix.
    torch's own meta path would run the math kernel (and import torch._dynamo, seconds)."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = torch.empty_like(q)
        kept = [q, k, v, out, q.new_empty(q.shape[:-1])]
        if mask is not None:
            kept.append(mask.to(q.dtype))
        ctx.save_for_backward(*kept)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("meta-device attention is for memory estimates only")


def _attention(q, k, v, mask=None):
    if q.is_meta:
        return _MetaFlashAttention.apply(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, window: Sequence[int],
                       shift: Sequence[int]) -> torch.Tensor:
    """Multi-head attention within windows of (B, *S, C) channels-last queries, keys and values of one map size
    (Swin's shifted windows where `shift` is non-zero). Returns (B, *S, C)."""
    b, *spatial, c = q.shape
    if tuple(window) == tuple(spatial) and not any(shift):  # global attention: one window, nothing to partition or mask
        q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        return _attention(q, k, v).transpose(1, 2).reshape(b, *spatial, c)
    dims = tuple(range(1, len(spatial) + 1))
    padded = [math.ceil(s / w) * w for s, w in zip(spatial, window)]
    pad = [x for s, p in zip(reversed(spatial), reversed(padded)) for x in (0, p - s)]
    needs_mask = any(shift) or padded != list(spatial)
    tensors = []
    for t in (q, k, v):
        if padded != list(spatial):
            t = F.pad(t, [0, 0] + pad)
        if any(shift):
            t = torch.roll(t, [-d for d in shift], dims)
        t = window_partition(t, window)  # (B * nW, T, C)
        tensors.append(t.reshape(t.shape[0], t.shape[1], heads, c // heads).transpose(1, 2))
    mask = None
    if needs_mask:
        mask = _window_mask(padded, spatial, window, shift, q.device)
        mask = mask.expand(b, *mask.shape).reshape(-1, *mask.shape[1:])
    out = _attention(*tensors, mask)  # (B * nW, heads, T, d)
    out = window_reverse(out.transpose(1, 2).reshape(out.shape[0], -1, c), window, padded)
    if any(shift):
        out = torch.roll(out, list(shift), dims)
    if padded != list(spatial):
        out = out[(slice(None), *(slice(0, s) for s in spatial))]
    return out


# ---------------------------------------------------------------------------------------------- modules
def heads_for(channels: int) -> int:
    heads = max(1, channels // HEAD_CHANNELS)
    while channels % heads:
        heads -= 1
    return heads


class WindowAttention(nn.Module):
    """Multi-head (windowed) attention on channels-last maps; self-attention when `context` is the input."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, window, shift) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.proj(windowed_attention(self.q(x), k, v, self.heads, window, shift))


class TransformerBlock(nn.Module):
    """Pre-norm Swin block on (B, C, *S) maps: windowed (shifted if `shifted`) or global self-attention, MLP."""

    def __init__(self, channels: int, heads: int, shifted: bool, mlp_ratio: int = 4):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(channels)
        self.attention = WindowAttention(channels, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(),
                                 nn.Linear(mlp_ratio * channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window, shift = window_and_shift(x.shape[2:], self.shifted)
        t = x.movedim(1, -1)
        h = self.norm1(t)
        t = t + self.attention(h, h, window, shift)
        t = t + self.mlp(self.norm2(t))
        return t.movedim(-1, 1)


class CrossAttentionFusion(nn.Module):
    """x + WMCA(LN(x), LN(skip)) on (B, C, *S) maps: decoder queries, encoder-skip keys and values."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm_query = nn.LayerNorm(channels)
        self.norm_skip = nn.LayerNorm(channels)
        self.attention = WindowAttention(channels, heads)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        window, shift = window_and_shift(x.shape[2:], shifted=False)
        t = x.movedim(1, -1)
        t = t + self.attention(self.norm_query(t), self.norm_skip(skip.movedim(1, -1)), window, shift)
        return t.movedim(-1, 1)


class HybridDecoder(UNetDecoder):
    """nnU-Net's UNetDecoder with cross-attention fusion of the skip (where `fuse[s]`, decoder order: lowest
    resolution first) before the concatenation."""

    def __init__(self, encoder: PlainConvEncoder, num_classes: int, n_conv_per_stage, deep_supervision: bool,
                 fuse: Sequence[bool]):
        super().__init__(encoder, num_classes, n_conv_per_stage, deep_supervision)
        channels = [encoder.output_channels[-(s + 2)] for s in range(len(self.stages))]
        self.fusions = nn.ModuleList([CrossAttentionFusion(c, heads_for(c)) if f else nn.Identity()
                                      for c, f in zip(channels, fuse)])

    def forward(self, skips):
        lres_input = skips[-1]
        seg_outputs = []
        for s in range(len(self.stages)):
            x = self.transpconvs[s](lres_input)
            skip = skips[-(s + 2)]
            if isinstance(self.fusions[s], CrossAttentionFusion):
                x = self.fusions[s](x, skip)
            x = self.stages[s](torch.cat((x, skip), 1))
            if self.deep_supervision:
                seg_outputs.append(self.seg_layers[s](x))
            elif s == len(self.stages) - 1:
                seg_outputs.append(self.seg_layers[-1](x))
            lres_input = x
        seg_outputs = seg_outputs[::-1]
        return seg_outputs if self.deep_supervision else seg_outputs[0]


class HybridUNet(nn.Module):
    """The plans' conv U-Net with transformer blocks at the stages in `transformer_stages` and cross-attention
    skip fusion at the decoder levels in `fusion_stages` (both encoder stage indices, i.e. of the skip's
    resolution). Use build_hybrid_network to get one from the plans."""

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage, conv_op,
                 kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder, conv_bias=False, norm_op=None,
                 norm_op_kwargs=None, dropout_op=None, dropout_op_kwargs=None, nonlin=None, nonlin_kwargs=None,
                 deep_supervision: bool = False, transformer_stages: Sequence[int] = (),
                 fusion_stages: Sequence[int] = (), transformer_depth: int = 2):
        super().__init__()
        self.transformer_stages = tuple(sorted(transformer_stages))
        self.fusion_stages = tuple(sorted(fusion_stages))
        self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                        strides, n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                        dropout_op_kwargs, nonlin, nonlin_kwargs, return_skips=True)
        for s in self.transformer_stages:
            c = self.encoder.output_channels[s]
            for i in range(transformer_depth):
                self.encoder.stages[s].append(TransformerBlock(c, heads_for(c), shifted=i % 2 == 1))
        fuse = [n_stages - 2 - s in self.fusion_stages for s in range(n_stages - 1)]
        self.decoder = HybridDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision, fuse)

    def forward(self, x: torch.Tensor):
        return self.decoder(self.encoder(x))

    @staticmethod
    def initialize(module: nn.Module) -> None:
        InitWeights_He(1e-2)(module)  # nnU-Net's, for the convs
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------- from the plans
def _stage_sides(configuration_manager: ConfigurationManager) -> List[Tuple[int, ...]]:
    """Feature-map size per encoder stage at the plans' patch size."""
    size = list(configuration_manager.patch_size)
    sides = []
    for stride in configuration_manager.network_arch_init_kwargs["strides"]:
        stride = [stride] * len(size) if isinstance(stride, int) else stride
        size = [s // t for s, t in zip(size, stride)]
        sides.append(tuple(size))
    return sides


def _hybrid_kwargs(configuration_manager: ConfigurationManager, transformer_max_side: int,
                   cross_attention_max_side: Optional[int], transformer_depth: int) -> dict:
    plans = dict(configuration_manager.network_arch_init_kwargs)
    for key in configuration_manager.network_arch_init_kwargs_req_import:
        if plans.get(key) is not None and isinstance(plans[key], str):
            plans[key] = pydoc.locate(plans[key])
    n_stages = plans["n_stages"]
    names = ("features_per_stage", "conv_op", "kernel_sizes", "strides", "conv_bias", "norm_op", "norm_op_kwargs",
             "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs")
    kwargs = {k: plans.get(k) for k in names}
    kwargs.update(n_stages=n_stages,
                  # residual-encoder plans give blocks, not convs, per stage: two convs per stage then
                  n_conv_per_stage=plans.get("n_conv_per_stage") or [2] * n_stages,
                  n_conv_per_stage_decoder=plans.get("n_conv_per_stage_decoder") or [2] * (n_stages - 1),
                  conv_bias=bool(plans.get("conv_bias")), transformer_depth=transformer_depth)
    sides = _stage_sides(configuration_manager)
    kwargs["transformer_stages"] = [s for s in range(1, n_stages) if max(sides[s]) <= transformer_max_side]
    kwargs["fusion_stages"] = [s for s in range(n_stages - 1)
                               if cross_attention_max_side is None or max(sides[s]) <= cross_attention_max_side]
    return kwargs


def _new_hybrid(configuration_manager, num_input_channels, num_output_channels, deep_supervision,
                transformer_max_side, cross_attention_max_side, transformer_depth) -> HybridUNet:
    return HybridUNet(num_input_channels, num_output_channels, deep_supervision=deep_supervision,
                      **_hybrid_kwargs(configuration_manager, transformer_max_side, cross_attention_max_side,
                                       transformer_depth))


def estimate_training_bytes(configuration_manager: ConfigurationManager, batch_size: Optional[int] = None,
                            num_input_channels: int = 1, num_output_channels: int = 2,
                            transformer_max_side: int = TRANSFORMER_MAX_SIDE,
                            cross_attention_max_side: Optional[int] = None, transformer_depth: int = 2) -> int:
    """Bytes one float32 training step of the hybrid network needs at the plans' patch size: what autograd keeps
    for the backward of one forward pass (counted on the meta device, without computing anything, each storage
    once), plus four copies of the parameters (weights, gradients, SGD momentum, an EMA teacher). The meta device
    runs attention through the math kernel, which keeps the attention probabilities; the CPU flash kernel keeps
    less, so attention-heavy networks are over- rather than under-estimated."""
    batch_size = batch_size or configuration_manager.batch_size
    with torch.device("meta"):
        network = _new_hybrid(configuration_manager, num_input_channels, num_output_channels, True,
                              transformer_max_side, cross_attention_max_side, transformer_depth)
        x = torch.empty(batch_size, num_input_channels, *configuration_manager.patch_size)
    parameters = {p.untyped_storage()._cdata for p in network.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in parameters:
            kept[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = network(x)
    kept.update({o.untyped_storage()._cdata: o.untyped_storage().nbytes() for o in outputs})
    parameter_bytes = sum(p.numel() * p.element_size() for p in network.parameters())
    return int(sum(kept.values()) + 4 * parameter_bytes)


def check_hybrid_fits(configuration_manager: ConfigurationManager, batch_size: Optional[int] = None,
                      budget_bytes: int = MEMORY_BUDGET_BYTES, **options) -> int:
    """Raise MemoryError (with the estimate, patch and batch) when a training step of the hybrid network would not
    fit in `budget_bytes`; return the estimate otherwise. `options`: those of estimate_training_bytes."""
    batch_size = batch_size or configuration_manager.batch_size
    needed = estimate_training_bytes(configuration_manager, batch_size, **options)
    if needed <= budget_bytes:
        return needed
    patch = "x".join(map(str, configuration_manager.patch_size))
    hint = ""
    if options.get("cross_attention_max_side") is None:
        lighter = estimate_training_bytes(configuration_manager, batch_size,
                                          **{**options, "cross_attention_max_side": TRANSFORMER_MAX_SIDE})
        if lighter <= budget_bytes:
            hint = (f" With cross-attention only where the map is at most {TRANSFORMER_MAX_SIDE} per axis "
                    f"(cross_attention_max_side={TRANSFORMER_MAX_SIDE}) it would need about {lighter / 1e9:.1f} GB.")
    raise MemoryError(
        f"{len(configuration_manager.patch_size)}D hybrid CNN-Transformer needs about {needed / 1e9:.1f} GB for "
        f"patch {patch} and batch {batch_size} (a float32 training step), more than the {budget_bytes / 1e9:.0f} "
        f"GB of a CPU machine it may use.{hint} Otherwise use the 2d configuration, a plan with a smaller patch or "
        f"batch, or nnU-Net's own network.")


def build_hybrid_network(configuration_manager: ConfigurationManager, num_input_channels: int,
                         num_output_channels: int, deep_supervision: bool = True, *,
                         transformer_max_side: int = TRANSFORMER_MAX_SIDE,
                         cross_attention_max_side: Optional[int] = None, transformer_depth: int = 2,
                         batch_size: Optional[int] = None, budget_bytes: int = MEMORY_BUDGET_BYTES) -> HybridUNet:
    """The hybrid student for a configuration of the plans (for a trainer's build_network_architecture, which
    nnUNetv2_predict calls too). 3D plans are refused (MemoryError) when a training step at the plans' patch and
    `batch_size` (default: the plans') would not fit in `budget_bytes`."""
    options = dict(transformer_max_side=transformer_max_side, cross_attention_max_side=cross_attention_max_side,
                   transformer_depth=transformer_depth)
    if len(configuration_manager.patch_size) == 3:
        check_hybrid_fits(configuration_manager, batch_size, budget_bytes, num_input_channels=num_input_channels,
                          num_output_channels=num_output_channels, **options)
    network = _new_hybrid(configuration_manager, num_input_channels, num_output_channels, deep_supervision,
                          **options)
    network.apply(HybridUNet.initialize)
    return network
