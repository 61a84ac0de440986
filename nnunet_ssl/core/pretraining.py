"""A masked-image-modelling phase for any SSL trainer (MIRA-U's stage 1, and nnUNetTrainerMIM on its own).

During the phase named MIM_PHASE the step is

    x_l, x_u = the labeled and the unlabeled batch, as nnU-Net augments them (labels unused)
    L_MIM    = 1/2 [masked_l1(head(f(mask(x_l))), x_l) + masked_l1(head(f(mask(x_u))), x_u)]

with f the network's last decoder features (the input of its final 1x1 segmentation layer, read by a forward
pre-hook) and `head` a light reconstruction head, a 1x1 convolution to the input channels. The head is not part
of the network: it has its own optimizer (in optimized_modules() during the phase only) and its own checkpoint
entry, so `network_weights` holds exactly the network that nnUNetv2_predict and `-pretrained_weights` load. It is
discarded when the phase ends. The EMA teacher is not updated during the phase (it serves no targets); the
phase after it rebuilds the teacher from the pretrained student (`on_phase_start`).
"""
import math
from typing import Dict

import torch
import torch.distributed as dist
from torch import nn

from nnunet_ssl.architectures.common import unwrap
from nnunet_ssl.architectures.multi_output import captured_decoder_features
from nnunet_ssl.components.masked_image_modelling import mask_patches, masked_l1, patch_mask
from nnunet_ssl.core.trainer import nnUNetTrainerSSL

MIM_PHASE = "mim"


def reconstruction_head_for(network: nn.Module, num_input_channels: int) -> nn.Module:
    """A 1x1 convolution from the last decoder features to the input channels (2D or 3D, as the network)."""
    decoder = getattr(unwrap(network), "decoder", None)
    if decoder is None or not hasattr(decoder, "seg_layers"):
        raise TypeError(f"{type(unwrap(network)).__name__}: masked image modelling needs an nnU-Net decoder with "
                        f"seg_layers (its last decoder features feed the reconstruction head)")
    last = decoder.seg_layers[-1]
    return type(last)(last.in_channels, num_input_channels, kernel_size=1)


class nnUNetTrainerSSLWithMIM(nnUNetTrainerSSL):
    """Base of trainers with a masked-image-modelling phase; a subclass lists Phase(MIM_PHASE, ...) in phases()
    and calls `mim_step` from train_step while `reconstructing`."""

    mim_mask_ratio = 0.75  # share of patches hidden (MIRA-U code v1; MAE)
    mim_patch = {2: (8, 8), 3: (8, 8, 8)}  # patch side per spatial dimension (the paper's 8 x 8 ViT patches)

    _reconstruction_head = None

    # ------------------------------------------------------------------ the head and its optimizer
    @property
    def reconstruction_head(self) -> nn.Module:
        if self._reconstruction_head is None:  # built with the network (initialize), before the optimizers
            self._reconstruction_head = reconstruction_head_for(self.network, self.num_input_channels).to(self.device)
        return self._reconstruction_head

    @property
    def has_mim_phase(self) -> bool:
        return any(p.name == MIM_PHASE for p in self.phases())

    @property
    def reconstructing(self) -> bool:
        return self.phases()[self.current_phase].name == MIM_PHASE

    def optimized_modules(self) -> Dict[str, nn.Module]:
        modules = super().optimized_modules()
        if self.reconstructing:
            modules["reconstruction_head"] = self.reconstruction_head
        return modules

    def update_teacher(self) -> None:
        if not self.reconstructing:
            super().update_teacher()

    def on_phase_start(self, k: int) -> None:
        super().on_phase_start(k)
        if not self.reconstructing and self.phases()[k - 1].name == MIM_PHASE and self.teacher is not None:
            self.teacher = self.build_teacher()  # the student and the teacher start from the pretrained network

    # ------------------------------------------------------------------ the step
    def mim_step(self, batch: dict) -> dict:
        x_l, _, x_u = self.step_batches(batch)
        self.zero_grad()
        losses = []
        for x in (x_l, x_u):  # one backward each: peak memory stays that of one pass
            loss = 0.5 * self.reconstruction_loss(x)
            self.backward(loss)
            losses.append(loss.detach())
        if self.is_ddp:  # the network's gradients are all-reduced by DDP, the head's here
            for p in self.reconstruction_head.parameters():
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        self.step()
        loss = float(sum(losses))
        return {"loss": loss, "reconstruction_loss": loss,
                **{k: math.nan for k in self.ssl_log_keys if k != "reconstruction_loss"}}

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """L1 on the hidden patches of x after reconstructing them from the masked image."""
        mask = patch_mask(x.shape, self.mim_patch[x.dim() - 2], self.mim_mask_ratio, x.device)
        with self.autocast(), captured_decoder_features(unwrap(self.network)) as features:
            self.network(mask_patches(x, mask))
            reconstruction = self.reconstruction_head(features.take())
        return masked_l1(reconstruction, x, mask)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_extras(self) -> dict:
        extras = super().checkpoint_extras()
        if self.has_mim_phase:  # kept after the phase too: the checkpoint of a pretraining shows what it learnt
            extras["reconstruction_head"] = self.reconstruction_head.state_dict()
        return extras

    def load_checkpoint_extras(self, checkpoint: dict) -> None:
        self.current_phase = checkpoint["phase"]
        if set(checkpoint["optimizer_states"]) != set(self.optimizers):  # the head's optimizer lives in its phase
            self.configure_network_optimizers()
            if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
                self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        super().load_checkpoint_extras(checkpoint)
        if self.has_mim_phase:
            self.reconstruction_head.load_state_dict(checkpoint["reconstruction_head"])
