"""Test-only trainer: the network, teacher and inference seams with a dual-head network (not a method).

Student = the plans' network ("main", deep supervision) + a 1x1 "aux" head on its last decoder features; the
teacher is the EMA of both heads. Labeled: nnU-Net's loss on main, CE on aux. Unlabeled: aux learns the
teacher's main argmax (CE). Predicts, by default, with the mean of the teacher's two heads."""
import torch
import torch.nn.functional as F

from nnunet_ssl.architectures.common import full_resolution
from nnunet_ssl.architectures.multi_output import MultiHeadNetwork
from nnunet_ssl.core.checkpoints import InferenceChoice
from nnunet_ssl.core.trainer import nnUNetTrainerSSL


class nnUNetTrainerSeamDualHead(nnUNetTrainerSSL):
    inference_weights = "teacher_mean"
    ssl_log_keys = ("sup_loss", "aux_pseudo_loss")
    unsupervised_terms = ("aux_pseudo_loss",)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        backbone = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                      num_output_channels, enable_deep_supervision)
        conv = backbone.decoder.seg_layers[-1]
        head = type(conv)(conv.in_channels, num_output_channels, 1)
        return MultiHeadNetwork(backbone, {"aux": head})

    def train_step(self, batch: dict) -> dict:
        x_l, y_l, x_u = self.step_batches(batch)
        self.zero_grad()
        with self.autocast():
            out = self.network(x_l, all_outputs=True)
            sup = self.loss(out["main"], y_l) + F.cross_entropy(out["aux"], full_resolution(y_l)[:, 0].long())
        self.backward(sup)
        with self.autocast():
            with torch.no_grad():
                pseudo = full_resolution(self.teacher(x_u, all_outputs=True)["main"]).argmax(1)
            aux = self.network(x_u, all_outputs=True)["aux"].float()
            aux_pseudo = self.unsupervised_term("aux_pseudo_loss", F.cross_entropy(aux, pseudo))
        self.backward(aux_pseudo)
        self.step()
        return {"loss": (sup + aux_pseudo).detach().cpu().numpy(), "sup_loss": sup.detach().cpu().numpy(),
                "aux_pseudo_loss": aux_pseudo.detach().cpu().numpy()}

    def inference_choices(self):
        return {**super().inference_choices(),
                "teacher_mean": InferenceChoice("teacher", (0.5, 0.5), "mean of the EMA teacher's two heads"),
                "student_aux": InferenceChoice("student", (0.0, 1.0), "the student's aux head")}
