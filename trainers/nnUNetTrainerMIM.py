"""Masked-image-modelling pretraining within nnU-Net's plans (MIRA-U's stage 1 on its own): the fold's labeled
training images and the unlabeled pool, labels unused, the 75% hidden 8x8(x8) patches reconstructed by a 1x1 head
on the last decoder features (nnunet_ssl.core.pretraining). The network is the plans' own, without dropout, so its
checkpoint starts any trainer of the same plans with the stock command:

    nnUNetv2_train DS CONF FOLD -tr nnUNetTrainerMIM
    nnUNetv2_train DS CONF FOLD -tr nnUNetTrainer
        -pretrained_weights $nnUNet_results/.../nnUNetTrainerMIM__nnUNetPlans__CONF/fold_FOLD/checkpoint_final.pth

nnU-Net's load_pretrained_weights copies every weight of `network_weights` by name except the segmentation layers
(seg_layers, left at their initialisation); the reconstruction head is a checkpoint entry of its own, not in
`network_weights`. Dropout networks (nnUNetTrainerMIRAU) have the same keys, so they load it too.

Validation: there is no segmentation to validate. Each epoch's validation batches give the reconstruction L1 on
the fold's validation cases (logged as nnU-Net's val_loss; the pseudo Dice is NaN), no checkpoint_best is written
(there is no score to select on: checkpoint_final is the pretrained model), and the final validation is skipped.
"""
from typing import List

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_ssl.core.phases import Phase
from nnunet_ssl.core.pretraining import MIM_PHASE, nnUNetTrainerSSLWithMIM
from nnunet_ssl.core.trainer import StepCost


class nnUNetTrainerMIM(nnUNetTrainerSSLWithMIM):
    inference_weights = "student"  # the only weights; predicting with them segments nothing useful
    ssl_log_keys = ("reconstruction_loss",)
    step_cost = StepCost(student_passes=2, teacher_passes=0)  # the masked labeled and unlabeled batch; no teacher

    def phases(self) -> List[Phase]:
        return [Phase(MIM_PHASE, 1.0)]

    def build_teacher(self):
        return None

    def on_train_start(self):
        super().on_train_start()
        # nnU-Net writes checkpoint_best whenever the EMA pseudo Dice improves or none was recorded; NaN compares
        # false, so none is written
        self._best_ema = float("nan")

    def train_step(self, batch: dict) -> dict:
        return self.mim_step(batch)

    def validation_step(self, batch: dict) -> dict:
        x = batch["data"].to(self.device, non_blocking=True)
        with torch.no_grad():
            return {"loss": self.reconstruction_loss(x).item()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        self._validation_context.__exit__(None, None, None)  # the core's inference-weights context
        loss = np.asarray(collate_outputs(val_outputs)["loss"], dtype=np.float64)
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, loss)
            loss = np.concatenate([np.atleast_1d(g) for g in gathered])
        self.logger.log("mean_fg_dice", float("nan"), self.current_epoch)
        self.logger.log("dice_per_class_or_region", [float("nan")], self.current_epoch)
        self.logger.log("val_losses", float(np.mean(loss)), self.current_epoch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("No final validation: nnUNetTrainerMIM pretrains (reconstruction only); start a "
                               "segmentation trainer from checkpoint_final.pth with -pretrained_weights")
