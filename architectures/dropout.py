"""Dropout as a network option: nnU-Net's networks have none, MC-dropout teachers and dropout-perturbed students
need it. Off unless a trainer asks (`nnUNetTrainerSSL.network_dropout`)."""
from dataclasses import dataclass

from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

PLACES = ("decoder", "encoder", "all")


@dataclass(frozen=True)
class Dropout:
    p: float = 0.1
    where: str = "decoder"  # decoder stages, encoder stages, or all
    channelwise: bool = False  # Dropout2d/3d (whole feature maps) instead of element-wise nn.Dropout

    def __post_init__(self):
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"dropout p must be in (0, 1), got {self.p}")
        if self.where not in PLACES:
            raise ValueError(f"dropout where must be one of {PLACES}, got {self.where!r}")


def _dropout_module(option: Dropout, conv: nn.Module) -> nn.Module:
    if not option.channelwise:
        return nn.Dropout(option.p)
    return {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}[conv.weight.dim() - 2](option.p)


def insert_dropout(network: nn.Module, option: Dropout) -> nn.Module:
    """Put a dropout layer right after the convolution of every ConvDropoutNormReLU block (nnU-Net's own
    position for `dropout_op`) in the chosen stages; returns the network. Blocks that already have dropout are
    left alone. State-dict keys of the blocks change (their `all_modules` indices shift), so the network that
    predicts must be built the same way: through the trainer's build_network_architecture."""
    parts = {"decoder": [network.decoder.stages], "encoder": [network.encoder],
             "all": [network.decoder.stages, network.encoder]}[option.where]
    blocks = [m for part in parts for m in part.modules() if isinstance(m, ConvDropoutNormReLU)]
    if not blocks:
        raise TypeError(f"{type(network).__name__}: no ConvDropoutNormReLU blocks in the {option.where}")
    for block in blocks:
        if getattr(block, "dropout", None) is not None:
            continue
        block.dropout = _dropout_module(option, block.conv)
        ops = list(block.all_modules)
        ops.insert(ops.index(block.conv) + 1, block.dropout)
        block.all_modules = nn.Sequential(*ops)
    return network


def dropout_layers(network: nn.Module):
    return [m for m in network.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
