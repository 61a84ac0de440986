"""DeepLabv3's segmentation head (Chen et al. 2017, "Rethinking Atrous Convolution"), 2D and 3D, with the conv,
norm and nonlinearity of an nnU-Net network so that it fits the plans' dimensionality and normalisation.

    ASPP  = [1x1 conv | 3x3 conv, dilation r_1 | ... | 3x3 conv, dilation r_n | image pooling]  (parallel)
    head  = 1x1 conv (project the concatenation) - dropout - 3x3 conv - 1x1 classifier

Every conv but the classifier is followed by the network's norm and nonlinearity, except the image-pooling branch:
it works on a 1-voxel map, where instance normalisation (nnU-Net's default) is undefined, so it is conv + bias +
nonlinearity, upsampled back to the feature size (torchvision: BatchNorm there).

Rates. DeepLabv3 uses rates 6/12/18 on a feature map of about 32 px (513 px crops at output stride 16), i.e.
dilations of 3/16, 6/16 and 9/16 of the feature map's side. The head here sits on nnU-Net's last decoder features,
at full resolution, so the default rates are those fractions of the patch size, per axis (an anisotropic 3D patch
gets anisotropic dilations), at least 1: a 128 x 128 patch gets 24/48/72, a 20^3 patch 4/8/11.
"""
from typing import Optional, Sequence, Tuple

import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

DEEPLABV3_RATE_FRACTIONS = (3 / 16, 6 / 16, 9 / 16)  # 6/12/18 over a 32-px feature map


def scaled_rates(patch_size: Sequence[int], fractions: Sequence[float] = DEEPLABV3_RATE_FRACTIONS
                 ) -> Tuple[Tuple[int, ...], ...]:
    """One dilation per axis for each rate: round(fraction x patch side), at least 1."""
    return tuple(tuple(max(1, round(f * s)) for s in patch_size) for f in fractions)


class _ConvNormNonlin(nn.Sequential):
    def __init__(self, ops: dict, in_channels: int, out_channels: int, kernel: int, dilation=1):
        dims = 2 if ops["conv_op"] is nn.Conv2d else 3
        dilation = (dilation,) * dims if isinstance(dilation, int) else tuple(dilation)
        padding = tuple(d * (kernel // 2) for d in dilation)
        super().__init__(ops["conv_op"](in_channels, out_channels, kernel, padding=padding, dilation=dilation,
                                        bias=False),
                         ops["norm_op"](out_channels, **(ops["norm_op_kwargs"] or {})),
                         ops["nonlin"](**(ops["nonlin_kwargs"] or {})))


class ASPPHead(nn.Module):
    """DeepLabv3 head on (B, in_channels, *spatial) features; returns (B, num_classes, *spatial) logits.

    `ops`: conv_op (nn.Conv2d or nn.Conv3d), norm_op, norm_op_kwargs, nonlin, nonlin_kwargs (those of the nnU-Net
    network the head extends, `ops_of`). `rates`: per rate an int or one dilation per spatial axis."""

    def __init__(self, ops: dict, in_channels: int, num_classes: int, rates: Sequence, width: int,
                 dropout: float = 0.1):
        super().__init__()
        if ops["conv_op"] not in (nn.Conv2d, nn.Conv3d):
            raise ValueError(f"ASPPHead needs nn.Conv2d or nn.Conv3d, got {ops['conv_op']}")
        if not rates:
            raise ValueError("ASPPHead needs at least one dilation rate")
        conv, nonlin = ops["conv_op"], ops["nonlin"]
        self.branches = nn.ModuleList([_ConvNormNonlin(ops, in_channels, width, 1)] +
                                      [_ConvNormNonlin(ops, in_channels, width, 3, r) for r in rates])
        self.pooling = nn.Sequential(conv(in_channels, width, 1, bias=True), nonlin(**(ops["nonlin_kwargs"] or {})))
        self.project = _ConvNormNonlin(ops, width * (len(rates) + 2), width, 1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.refine = _ConvNormNonlin(ops, width, width, 3)
        self.classifier = conv(width, num_classes, 1, bias=True)
        self.apply(InitWeights_He(1e-2))  # nnU-Net's initialisation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        spatial = features.shape[2:]
        pooled = self.pooling(features.mean(dim=tuple(range(2, features.dim())), keepdim=True))
        parts = [branch(features) for branch in self.branches] + [pooled.expand(-1, -1, *spatial)]
        return self.classifier(self.refine(self.dropout(self.project(torch.cat(parts, 1)))))


def ops_of(network: nn.Module) -> dict:
    """conv/norm/nonlinearity of an nnU-Net network (its encoder's, as the plans set them)."""
    encoder = network.encoder
    return {k: getattr(encoder, k) for k in ("conv_op", "norm_op", "norm_op_kwargs", "nonlin", "nonlin_kwargs")}


def aspp_head_for(network: nn.Module, num_classes: int, patch_size: Sequence[int],
                  rates: Optional[Sequence] = None, width: Optional[int] = None, dropout: float = 0.1) -> ASPPHead:
    """An ASPPHead for the last decoder features of an nnU-Net network (the input of its final 1x1 seg layer):
    rates scaled to the patch size unless given, width = those features' channels unless given."""
    in_channels = network.decoder.seg_layers[-1].in_channels
    return ASPPHead(ops_of(network), in_channels, num_classes, rates or scaled_rates(patch_size),
                    width or in_channels, dropout)

