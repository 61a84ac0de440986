"""What every network of the plugin shares: reaching the plain module behind wrappers, deep supervision on/off."""
from torch import nn


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


def set_deep_supervision(network: nn.Module, enabled: bool) -> None:
    """Deep supervision on/off for nnU-Net's networks and for the plugin's wrappers around them.

    nnU-Net's own `set_deep_supervision_enabled` sets `network.decoder.deep_supervision`, which a wrapper does not
    have; this sets it on every nnU-Net decoder inside the (unwrapped) network."""
    decoders = [m.decoder for m in unwrap(network).modules() if hasattr(getattr(m, "decoder", None),
                                                                         "deep_supervision")]
    if not decoders:
        raise TypeError(f"{type(unwrap(network)).__name__} holds no nnU-Net decoder with a deep_supervision switch")
    for decoder in decoders:
        decoder.deep_supervision = enabled


def full_resolution(output):
    """The highest-resolution output of nnU-Net's deep-supervision list (or the tensor itself, without it)."""
    return output[0] if isinstance(output, list) else output
