"""Networks with more than one output, loadable by `nnUNetv2_predict`.

nnU-Net predicts with `trainer.build_network_architecture(...)` and a strict `load_state_dict` of the checkpoint's
`network_weights`, then calls `forward(x)`. A network with several outputs (a second head, two member networks)
therefore says through its own state which output `forward` returns: the buffer `output_mix` holds one weight per
output. One-hot (the default: the first output) returns that output unchanged, so a wrapped network predicts
exactly like the network it wraps; other weights return the weighted mean of the outputs' probabilities, as logits
(log of the mean softmax, or the logit of the mean sigmoid for region training, buffer `sigmoid_outputs`).
An inference choice (nnunet_ssl.core.checkpoints) is a set of weights plus such a mix.

Training code never relies on the mix: `network(x, all_outputs=True)` returns every output by name. Calling it
through the module (rather than a method of the unwrapped network) keeps DDP's gradient synchronisation and
torch.compile in the path.
"""
import math
from contextlib import contextmanager
from typing import Dict, List, Sequence

import torch
from torch import nn

from nnunet_ssl.architectures.common import set_deep_supervision

_MIN_PROB = 1e-7


def mix_probabilities(logits: Sequence[torch.Tensor], weights: Sequence[float], sigmoid: bool) -> torch.Tensor:
    """Logits whose probabilities are sum_k w_k p_k (w normalised to sum 1); computed in float32."""
    total = float(sum(weights))
    if sigmoid:
        p = sum(w / total * torch.sigmoid(z.float()) for w, z in zip(weights, logits) if w)
        p = p.clamp(_MIN_PROB, 1 - _MIN_PROB)
        return torch.log(p) - torch.log1p(-p)
    terms = [torch.log_softmax(z.float(), 1) + math.log(w / total) for w, z in zip(weights, logits) if w]
    return torch.logsumexp(torch.stack(terms), 0)


def mix_outputs(outputs: List, weights: Sequence[float], sigmoid: bool):
    """Mix nnU-Net-style outputs (tensors, or deep-supervision lists). Lists of equal length mix level by level;
    otherwise the full-resolution outputs mix and the lower levels are the first weighted output's (with deep
    supervision on they serve only nnU-Net's validation loss)."""
    used = [i for i, w in enumerate(weights) if w]
    if not used:
        raise ValueError("output_mix has no non-zero weight")
    if len(used) == 1:
        return outputs[used[0]]
    as_lists = [o if isinstance(o, list) else [o] for o in outputs]
    if len({len(as_lists[i]) for i in used}) == 1:
        mixed = [mix_probabilities([o[level] for o in as_lists], weights, sigmoid)
                 for level in range(len(as_lists[used[0]]))]
    else:
        mixed = [mix_probabilities([o[0] for o in as_lists], weights, sigmoid)] + as_lists[used[0]][1:]
    return mixed if isinstance(outputs[used[0]], list) else mixed[0]


class MultiOutputNetwork(nn.Module):
    """Base: subclasses pass their output names and define `forward_outputs(x) -> {name: output}`."""

    def __init__(self, output_names: Sequence[str]):
        super().__init__()
        self.output_names = tuple(output_names)
        mix = torch.zeros(len(self.output_names))
        mix[0] = 1.0
        self.register_buffer("output_mix", mix)
        self.register_buffer("sigmoid_outputs", torch.tensor(False))

    def forward_outputs(self, x: torch.Tensor) -> Dict[str, object]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, all_outputs: bool = False):
        outputs = self.forward_outputs(x)
        if all_outputs:
            return outputs
        return mix_outputs([outputs[n] for n in self.output_names], self.output_mix.tolist(),
                           bool(self.sigmoid_outputs))

    def mix_state(self, weights: Dict[str, float]) -> torch.Tensor:
        """The `output_mix` buffer for {output name: weight} (absent names weigh 0)."""
        unknown = set(weights) - set(self.output_names)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; this network has {list(self.output_names)}")
        return torch.tensor([float(weights.get(n, 0.0)) for n in self.output_names])

    def set_deep_supervision(self, enabled: bool) -> None:
        set_deep_supervision(self, enabled)


class NetworkEnsemble(MultiOutputNetwork):
    """Several member networks side by side (each trained with its own optimizer); one output per member."""

    def __init__(self, members: Dict[str, nn.Module]):
        super().__init__(list(members))
        self.members = nn.ModuleDict(members)

    def forward_outputs(self, x: torch.Tensor) -> Dict[str, object]:
        return {name: member(x) for name, member in self.members.items()}


class DecoderFeatures:
    """Captures the input of an nnU-Net decoder's final 1x1 segmentation layer (the last decoder features) during
    a forward pass, through a forward pre-hook: the network itself is unchanged."""

    def __init__(self, network: nn.Module):
        self.features = None
        self.hook = network.decoder.seg_layers[-1].register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs):
        self.features = inputs[0]

    def take(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("no decoder features captured: run the network's forward first")
        return features


@contextmanager
def captured_decoder_features(network: nn.Module):
    """DecoderFeatures of `network` (an nnU-Net network, unwrapped) for the block only: the hook is removed
    afterwards, so copies of the network made later (an EMA teacher) carry none."""
    features = DecoderFeatures(network)
    try:
        yield features
    finally:
        features.hook.remove()


class MultiHeadNetwork(MultiOutputNetwork):
    """An nnU-Net network (output "main", deep supervision kept) plus extra heads on its last decoder features,
    each at full resolution. `forward_outputs(x)` also returns the features themselves under "features"."""

    def __init__(self, backbone: nn.Module, heads: Dict[str, nn.Module]):
        if "main" in heads or "features" in heads:
            raise ValueError("head names 'main' and 'features' are reserved")
        super().__init__(["main", *heads])
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self._features = DecoderFeatures(backbone)

    @property
    def decoder(self):  # deep supervision is the backbone's
        return self.backbone.decoder

    def forward_outputs(self, x: torch.Tensor) -> Dict[str, object]:
        outputs = {"main": self.backbone(x)}
        features = self._features.take()
        outputs.update({name: head(features) for name, head in self.heads.items()})
        outputs["features"] = features
        return outputs
