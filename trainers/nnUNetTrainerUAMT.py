"""UAMT, Uncertainty-guided Auxiliary Mean Teacher (Mu, Wei, Zhang: "Semi-Supervised Skin Lesion Segmentation
Based on Pseudo-Labels"), inside nnU-Net. Its gaps are filled as UCMT (Shen et al., IJCAI 2023), its likely base,
fills them (../shared/papers/reference-code-notes.md, section 3a).

Student f_S: two heads on shared features, h_1 = nnU-Net's own output (deep supervision kept) and h_2 = a DeepLabv3
ASPP head on the last decoder features (nnunet_ssl.architectures.aspp). Teacher f_T: the EMA of the whole student,
a_t = min(1 - 1/(t+1), 0.99). Per iteration, with nnU-Net's augmented labeled batch (x_l, y) and unlabeled batch
x_u, which the teacher sees as is and the student through a photometric perturbation P (same geometry):

  Stage 1
    T   = argmax 1/2 (softmax h_1^T(x_u) + softmax h_2^T(x_u))                             pseudo label
    L_s = sum_k DC+CE(h_k(x_l), y)                                                         (eq. 6)
    L_u = sum_k DC+CE(h_k(P x_u), T)                                                       (eq. 7)
          + 1/2 [DC+CE(h_1, argmax h_2) + DC+CE(h_2, argmax h_1)]   (targets: no gradient)
    L   = L_s + lambda(t) L_u,  lambda(t) = 0.1 exp(-5 (1 - t/t_r)^2),  t_r = 20% of the budget
    optimizer step, EMA update
  Stage 2
    U_k = H(1/2 (softmax f_T + softmax h_k)),  per image, from stage 1's predictions        (eq. 2-3, entropy)
    x'  = x with its K most uncertain patches under U_1 overwritten by its K most confident under U_2, then its K
          most uncertain under U_2 by its K most confident under U_1 (grid side = size // 16 in 2D, // 8 in 3D);
          y moves with the labeled pixels, T with the unlabeled ones
    L on the new images (head-to-head targets from the heads' predictions on them); optimizer step, EMA update

DC+CE is nnU-Net's loss: the plans' one against y (h_1 with deep supervision, h_2 at full resolution), Dice per
sample and class with background against T and the heads' argmax (nnunet_ssl.components.losses.hard_label_dc_ce).
Two optimizer steps per iteration: a budget of iterations costs UAMT about twice nnUNetTrainer's passes
(step_cost). Prediction: the teacher's mean of both heads by default (inference_choices).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_ssl.architectures.aspp import aspp_head_for
from nnunet_ssl.architectures.common import full_resolution
from nnunet_ssl.architectures.multi_output import MultiHeadNetwork
from nnunet_ssl.components.losses import hard_label_dc_ce
from nnunet_ssl.components.patch_replacement import patch_grid, uncertainty_replacement
from nnunet_ssl.components.perturbations import Photometric, mix_up, photometric
from nnunet_ssl.components.uncertainty import mixture_entropy
from nnunet_ssl.core.checkpoints import InferenceChoice
from nnunet_ssl.core.trainer import StepCost, nnUNetTrainerSSL
from nnunet_ssl.utilities.inputs import UserError


class UAMTConfigurationError(UserError):
    """A dataset or setting UAMT cannot train with; the message says which and why."""


class nnUNetTrainerUAMT(nnUNetTrainerSSL):
    ema_decay = 0.99
    ema_warm_start = True  # a_t = min(1 - 1/(t+1), 0.99) (UCMT)
    aux_head = True  # h_2; False: one head (the _UMT ablation)
    patch_replacement = True  # stage 2; False: one stage (the _AMT ablation)
    unsupervised_weight = 0.1  # lambda's maximum (UCMT's alpha)
    rampup_fraction = 0.2  # t_r as a share of all iterations (UCMT: 5 of 25 epochs)
    literal_weighting = False  # the paper's eq. 4-5: lambda L_s + (1 - lambda) L_u, lambda ramped over the whole run
    literal_lambda_max = 1.0  # lambda_m of eq. 5 (the paper gives no value)
    top_k = 2  # K
    grid_divisions = {2: 16, 3: 8}  # patch side = size // divisions, per axis
    student_perturbation: Optional[Photometric] = Photometric()  # None: the student sees x_u as the teacher does
    aspp_width: Optional[int] = None  # None: the last decoder features' channels
    aspp_rates: Optional[Sequence] = None  # None: DeepLabv3's rates scaled to the patch size (architectures.aspp)
    aspp_dropout = 0.1
    inference_weights = "teacher_mean"
    needs_softmax_classes = True  # pseudo labels and head-to-head targets are argmax class maps

    # ------------------------------------------------------------------ what the variant declares
    @classmethod
    def declare(cls) -> None:
        """Log keys, unsupervised terms and step cost follow the switches, so an ablation is one line."""
        stages = ("", "mix_") if cls.patch_replacement else ("",)
        kinds = ("sup_loss", "pseudo_loss") + (("cross_loss",) if cls.aux_head else ())
        losses = tuple(stage + kind for stage in stages for kind in kinds)
        cls.unsupervised_terms = tuple(k for k in losses if not k.endswith("sup_loss"))
        cls.ssl_log_keys = losses + ("lambda", "uncertainty") + (("moved_fraction",) if cls.patch_replacement else ())
        # per stage a labeled and an unlabeled student pass; teacher on x_u, and on x_l for its uncertainty map
        cls.step_cost = StepCost(student_passes=2 * len(stages), teacher_passes=len(stages))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.declare()

    # ------------------------------------------------------------------ network and inference
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        backbone = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                      num_output_channels, enable_deep_supervision)
        if not cls.aux_head:
            return backbone
        head = aspp_head_for(backbone, num_output_channels, configuration_manager.patch_size, cls.aspp_rates,
                             cls.aspp_width, cls.aspp_dropout)
        return MultiHeadNetwork(backbone, {"aspp": head})

    def inference_choices(self) -> Dict[str, InferenceChoice]:
        if not self.aux_head:
            return super().inference_choices()
        return {f"{weights}_{mix}": InferenceChoice(weights, output_mix, f"the {who}, {what}")
                for weights, who in (("teacher", "EMA teacher"), ("student", "student"))
                for mix, output_mix, what in (("mean", (0.5, 0.5), "mean of both heads' probabilities"),
                                              ("main", (1.0, 0.0), "nnU-Net head (h_1) only"))}

    def head_outputs(self, module, x: torch.Tensor) -> dict:
        """{"main": h_1 (a deep-supervision list), "aspp": h_2 (full resolution)}; "main" only with one head."""
        if not self.aux_head:
            return {"main": module(x)}
        out = module(x, all_outputs=True)
        return {"main": out["main"], "aspp": out["aspp"]}

    # ------------------------------------------------------------------ set-up
    def on_train_start(self):
        if self.patch_replacement:
            grid = self.grid(self.configuration_manager.patch_size)
            if not 1 <= self.top_k <= grid.n_patches:
                raise UAMTConfigurationError(
                    f"{self.__class__.__name__}: top_k = {self.top_k}, but the patch "
                    f"{self.configuration_manager.patch_size} has {grid.n_patches} grid patches; K must be in "
                    f"1..{grid.n_patches}")
        super().on_train_start()
        self.hard_label_loss = hard_label_dc_ce()

    def grid(self, spatial_shape):
        return patch_grid(spatial_shape, self.grid_divisions[len(spatial_shape)])

    # ------------------------------------------------------------------ the method
    def train_step(self, batch: dict) -> dict:
        x_l, y_l, x_u = self.step_batches(batch)
        with torch.no_grad(), self.autocast():
            x_s = self.student_view(x_u, x_l)  # P x_u
            p_teacher_u = self.teacher_probabilities(x_u)
            pseudo_label = p_teacher_u.argmax(1)  # T
            p_teacher_l = self.teacher_probabilities(x_l) if self.patch_replacement else None
        lam, weights = self.loss_weights()

        # stage 1: L = L_s + lambda L_u on (x_l, y) and (P x_u, T)
        log, u_l, u_u = self.stage("", x_l, y_l, x_s, pseudo_label, weights, p_teacher_l, p_teacher_u)
        self.step(ends_iteration=not self.patch_replacement)
        log.update({"lambda": lam, "uncertainty": torch.stack(u_u).mean().item()})

        if self.patch_replacement:  # stage 2: the same losses on the patch-replaced images
            with torch.no_grad():
                move_l = uncertainty_replacement(*u_l, self.top_k, self.grid(x_l.shape[2:]))  # U_1, U_2
                move_u = uncertainty_replacement(*u_u, self.top_k, self.grid(x_u.shape[2:]))
                y_mixed = self.deep_supervision_targets(move_l.apply(full_resolution(y_l)), y_l)
                x_l_mixed, x_u_mixed = move_l.apply(x_l), move_u.apply(x_s)
                pseudo_mixed = move_u.apply(pseudo_label.unsqueeze(1))[:, 0]
            mixed, _, _ = self.stage("mix_", x_l_mixed, y_mixed, x_u_mixed, pseudo_mixed, weights)
            self.step()
            log.update({**mixed, "loss": log["loss"] + mixed["loss"],
                        "moved_fraction": 0.5 * (move_l.moved_fraction(x_l.shape[2:]) +
                                                 move_u.moved_fraction(x_u.shape[2:]))})
        return log

    def stage(self, prefix: str, x_l, y_l, x_u, pseudo_label, weights: Tuple[float, float],
              p_teacher_l: torch.Tensor = None, p_teacher_u: torch.Tensor = None):
        """One forward and backward of the labeled and the unlabeled batch: w_s L_s + w_u L_u, accumulated into the
        student's gradient. Returns the losses ("loss": the weighted sum) and, given teacher probabilities, each
        head's uncertainty maps U_k on x_l and on x_u (no graph)."""
        w_s, w_u = weights
        self.zero_grad()
        with self.autocast():
            out = self.head_outputs(self.network, x_l)
            sup_loss = self.supervised_loss(out, y_l)  # eq. 6
        self.backward(w_s * sup_loss)
        u_l = self.uncertainty_maps(p_teacher_l, out)
        del out
        with self.autocast():
            out = self.head_outputs(self.network, x_u)
            pseudo_loss, cross_loss = self.unsupervised_losses(prefix, out, pseudo_label)  # eq. 7
        self.backward(w_u * (pseudo_loss + cross_loss))
        u_u = self.uncertainty_maps(p_teacher_u, out)
        losses = {f"{prefix}sup_loss": sup_loss.item(), f"{prefix}pseudo_loss": pseudo_loss.item()}
        if self.aux_head:
            losses[f"{prefix}cross_loss"] = cross_loss.item()
        losses["loss"] = w_s * losses[f"{prefix}sup_loss"] + w_u * (pseudo_loss.item() + cross_loss.item())
        return losses, u_l, u_u

    def supervised_loss(self, out: dict, y_l) -> torch.Tensor:
        """L_s (eq. 6): nnU-Net's loss on h_1 (deep supervision) plus its full-resolution loss on h_2."""
        loss = self.loss(out["main"], y_l)
        if "aspp" in out:
            full = self.loss.loss if isinstance(self.loss, DeepSupervisionWrapper) else self.loss
            loss = loss + full(out["aspp"], full_resolution(y_l))
        return loss

    def unsupervised_losses(self, prefix: str, out: dict, pseudo_label: torch.Tensor):
        """L_u (eq. 7): each head against T, and each head against the other's argmax (CPS convention, 1/2 each
        direction). Every target is a hard label map: no gradient reaches the teacher or the target's head."""
        h = {name: full_resolution(logits).float() for name, logits in out.items()}
        target = pseudo_label.unsqueeze(1)
        pseudo_loss = self.unsupervised_term(f"{prefix}pseudo_loss",
                                             sum(self.hard_label_loss(z, target) for z in h.values()))
        if not self.aux_head:
            return pseudo_loss, torch.zeros((), device=pseudo_loss.device)
        h_1, h_2 = h["main"], h["aspp"]
        cross_1 = self.unsupervised_term(f"{prefix}cross_loss", self.hard_label_loss(h_1, self.argmax(h_2)),
                                         target_from="network.heads.aspp")
        cross_2 = self.unsupervised_term(f"{prefix}cross_loss", self.hard_label_loss(h_2, self.argmax(h_1)),
                                         target_from="network.backbone.decoder.seg_layers")
        return pseudo_loss, 0.5 * (cross_1 + cross_2)

    def student_view(self, x_u: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        """P x_u: the unlabeled batch as the student sees it (the teacher sees x_u itself)."""
        return photometric(x_u, self.student_perturbation) if self.student_perturbation else x_u

    @staticmethod
    def argmax(logits: torch.Tensor) -> torch.Tensor:
        """A head's hard prediction as a target: (B, 1, *spatial), stop-gradient."""
        return logits.detach().argmax(1, keepdim=True)

    @torch.no_grad()
    def teacher_probabilities(self, data: torch.Tensor) -> torch.Tensor:
        """The teacher's prediction: the mean of its heads' softmax (T is its argmax)."""
        heads = self.head_outputs(self.teacher, data).values()
        return sum(self.probabilities(full_resolution(z)) for z in heads) / len(heads)

    @torch.no_grad()
    def uncertainty_maps(self, p_teacher: Optional[torch.Tensor], out: dict):
        """U_k = H(1/2 (p_teacher + softmax h_k)) per head (eq. 2-3 with the entropy's sign: high = uncertain);
        None without teacher probabilities. One head: the same map twice."""
        if p_teacher is None:
            return None
        maps = [mixture_entropy(p_teacher, self.probabilities(full_resolution(z))) for z in out.values()]
        return maps if len(maps) == 2 else maps * 2

    def loss_weights(self) -> Tuple[float, Tuple[float, float]]:
        """lambda(t) and the weights (w_s, w_u) of L_s and L_u: (1, lambda), lambda = 0.1 exp(-5 (1 - t/t_r)^2);
        literal_weighting: (lambda, 1 - lambda), lambda = lambda_m exp(-5 (1 - t/m)^2), m = all iterations."""
        if self.literal_weighting:
            lam = self.literal_lambda_max * self.rampup(1.0)
            return lam, (lam, 1.0 - lam)
        lam = self.unsupervised_weight * self.rampup(self.rampup_fraction)
        return lam, (1.0, lam)

    @staticmethod
    def deep_supervision_targets(y: torch.Tensor, like):
        """Full-resolution labels y at every deep-supervision level of `like`, downsampled as nnU-Net's
        DownsampleSegForDSTransform does (nearest-exact)."""
        if not isinstance(like, list):
            return y
        return [y] + [F.interpolate(y.float(), size=t.shape[2:], mode="nearest-exact").to(y.dtype) for t in like[1:]]


nnUNetTrainerUAMT.declare()


# ---------------------------------------------------------------------- the paper's ablations (Table III)
class nnUNetTrainerUAMT_AMT(nnUNetTrainerUAMT):
    """Auxiliary head, no uncertainty-guided patch replacement (one stage per iteration)."""
    patch_replacement = False


class nnUNetTrainerUAMT_UMT(nnUNetTrainerUAMT):
    """Patch replacement, one head (nnU-Net's): U_1 = U_2, the plain network, the EMA teacher predicts."""
    aux_head, inference_weights = False, "teacher"


class nnUNetTrainerUAMT_LiteralWeighting(nnUNetTrainerUAMT):
    """The paper's eq. 4-5 as written: lambda L_s + (1 - lambda) L_u, lambda ramped up over the whole run (almost
    no supervised signal at the start)."""
    literal_weighting = True


# ---------------------------------------------------------------------- a diagnostic
class nnUNetTrainerUAMT_LabeledMix(nnUNetTrainerUAMT):
    """Not the paper: the student's view of x_u is first blended with a labeled image as SGRS's mix-up (eq. 3-4,
    Beta(0.75, 0.75), lam >= 0.5), the target still T of x_u. On PH2 UAMT shrank the lesions as MIRA-U did, and
    the same blend stopped MIRA-U's shrinking (README); this asks whether it does the same for UAMT."""
    mix_alpha = 0.75

    def student_view(self, x_u, x_l):
        return super().student_view(mix_up(x_u, x_l, self.mix_alpha)[0], x_l)


class nnUNetTrainerUAMT_LabeledMixFullWeight(nnUNetTrainerUAMT_LabeledMix):
    """The labeled mix-up with lambda's maximum at 1 instead of UCMT's 0.1. At 0.1 L_u barely moves the student and
    UAMT tied nnUNetTrainer on PH2 (README); the paper's eq. 4-5 weigh L_u comparably to L_s, and at weight 1 the
    mix-up is what kept SGRS's and MIRA-U's pseudo labels from shrinking."""
    unsupervised_weight = 1.0
