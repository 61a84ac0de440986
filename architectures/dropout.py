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
    left alone.

    The layer is a child of the convolution, applied by a forward hook on it, rather than a new entry of the
    block's `all_modules`: the state-dict keys stay those of the plain network (dropout has no weights), so a
    plain nnU-Net checkpoint loads into the dropout network and back (`nnUNetv2_train -pretrained_weights`, an
    nnUNetTrainerMIM checkpoint into nnUNetTrainerMIRAU). The hook reads the layer from the convolution it is
    called on, so a deep copy (an EMA teacher) runs its own layer."""
    parts = {"decoder": [network.decoder.stages], "encoder": [network.encoder],
             "all": [network.decoder.stages, network.encoder]}[option.where]
    blocks = [m for part in parts for m in part.modules() if isinstance(m, ConvDropoutNormReLU)]
    if not blocks:
        raise TypeError(f"{type(network).__name__}: no ConvDropoutNormReLU blocks in the {option.where}")
    for block in blocks:
        if getattr(block, "dropout", None) is not None or hasattr(block.conv, DROPOUT_AFTER):
            continue
        setattr(block.conv, DROPOUT_AFTER, _dropout_module(option, block.conv))
        block.conv.register_forward_hook(_dropout_after_conv)
    return network


DROPOUT_AFTER = "dropout_after"  # the attribute of a convolution that holds its inserted dropout layer


def _dropout_after_conv(conv: nn.Module, inputs, output):
    return getattr(conv, DROPOUT_AFTER)(output)


def dropout_layers(network: nn.Module):
    return [m for m in network.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
