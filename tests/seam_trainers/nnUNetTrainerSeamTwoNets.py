"""Test-only trainer: two different networks with two optimizers, no teacher, an ensemble inference choice
(the seams a dual-network method needs; not a method).

a = the plans' network, b = a residual-encoder U-Net from the same plans; each has nnU-Net's optimizer and
PolyLR. Labeled: nnU-Net's loss for each. Unlabeled: cross pseudo supervision, each learns the other's argmax."""
import torch.nn.functional as F

from nnunet_ssl.architectures.common import full_resolution, unwrap
from nnunet_ssl.architectures.multi_output import NetworkEnsemble
from nnunet_ssl.architectures.plans import residual_encoder_network
from nnunet_ssl.core.checkpoints import InferenceChoice
from nnunet_ssl.core.trainer import StepCost, nnUNetTrainerSSL


class nnUNetTrainerSeamTwoNets(nnUNetTrainerSSL):
    inference_weights = "ensemble"
    ssl_log_keys = ("sup_loss_a", "sup_loss_b", "cps_loss_a", "cps_loss_b")
    unsupervised_terms = ("cps_loss_a", "cps_loss_b")
    step_cost = StepCost(student_passes=2, teacher_passes=0)  # per network: labeled + unlabeled

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        a = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                               num_output_channels, enable_deep_supervision)
        b = residual_encoder_network(configuration_manager, num_input_channels, num_output_channels,
                                     enable_deep_supervision)
        return NetworkEnsemble({"a": a, "b": b})

    def build_teacher(self):
        return None

    def optimized_modules(self):
        return dict(unwrap(self.network).members)

    def inference_choices(self):
        return {"ensemble": InferenceChoice("student", (0.5, 0.5), "mean of both networks' probabilities"),
                "a": InferenceChoice("student", (1.0, 0.0), "network a"),
                "b": InferenceChoice("student", (0.0, 1.0), "network b")}

    def train_step(self, batch: dict) -> dict:
        x_l, y_l, x_u = self.step_batches(batch)
        self.zero_grad()
        with self.autocast():
            out = self.network(x_l, all_outputs=True)
            sup = {k: self.loss(out[k], y_l) for k in ("a", "b")}
        self.backward(sup["a"] + sup["b"])
        with self.autocast():
            out = self.network(x_u, all_outputs=True)
            z = {k: full_resolution(out[k]).float() for k in ("a", "b")}
            cps = {k: self.unsupervised_term(f"cps_loss_{k}", F.cross_entropy(z[k], z[other].detach().argmax(1)),
                                             trains=(k,), target_from=other)
                   for k, other in (("a", "b"), ("b", "a"))}
        self.backward(cps["a"] + cps["b"])
        self.step()
        out = {f"sup_loss_{k}": v.detach().cpu().numpy() for k, v in sup.items()}
        out.update({f"cps_loss_{k}": v.detach().cpu().numpy() for k, v in cps.items()})
        out["loss"] = sum(out.values())
        return out
