"""MIRA-U (Qamar 2025, "Confidence-Weighted Semi-Supervised Learning for Skin Lesion Segmentation Using Hybrid
CNN-Transformer Networks") inside nnU-Net: masked-image-modelling pretraining, then an EMA teacher's MC-dropout
confidence-weighted soft pseudo labels. The paper is implemented, not the authors' code (whose teacher head never
trains, whose "EMA" pairs a ViT with a CNN by parameter position and whose weak and strong views are different
images: ../shared/papers/reference-code-notes.md, section 3b); only hyperparameter values come from the code.

Phase "mim" (25% of the budget; nnunet_ssl.core.pretraining): L_MIM, the L1 of the 75% hidden 8x8(x8) patches,
on labeled and unlabeled images, through a 1x1 reconstruction head on the last decoder features (discarded).
Phase "ssl" (the rest; new optimizer and PolyLR; the teacher is rebuilt from the pretrained student). Per
iteration, with nnU-Net's labeled batch (x_l, y) and unlabeled batch x_w (the weak view, nnU-Net-augmented):

    x_s        = CutOut(strong photometric(x_w))      the strong view (strong_view): same geometry, nothing to invert
    mu, sigma  = mean, std of softmax teacher(x_w) over M dropout passes (one batched forward of M x B)
    w          = exp(-sigma / kappa),  m = [sigma < tau_u],  y~ = w mu (foreground), 1 - w mu (background)
                 (per voxel, sigma = max over classes: nnunet_ssl.components.soft_pseudo_labels)
    p_s, p_w   = softmax student(x_s), stopgrad softmax student(x_w)
    L_unsup    = sum(m w [lambda_U CE(y~, p_s) + lambda_C ||p_s - p_w||^2]) / sum(m w)
    L_ent      = mean over unlabeled voxels of H(p_s)
    L          = L_sup + beta(t) L_unsup + gamma L_ent,   L_sup = nnU-Net's loss (DC + CE, deep supervision)
    beta(t)    = exp(-5 (1 - t/T)^2) for t < T = 53.3% of the ssl phase (the code's 80 of 150 epochs), then 1

The student has dropout p = 0.1 in its decoder stages (a network option; the state-dict keys are the plain
network's, so nnUNetTrainerMIM checkpoints load with -pretrained_weights). Dropout is on in every student pass
(training mode) and in the teacher only for its M passes; validation and nnUNetv2_predict run in eval mode,
without it. The unsupervised terms use the full-resolution output (pseudo labels are voxel-level); deep
supervision stays with the real labels. Softmax datasets only.
"""
from typing import List

import torch

from nnunet_ssl.architectures.common import full_resolution
from nnunet_ssl.architectures.dropout import Dropout, insert_dropout
from nnunet_ssl.architectures.hybrid import build_hybrid_network
from nnunet_ssl.components.losses import soft_cross_entropy, soft_dice_loss, squared_distance, weighted_voxel_mean
from nnunet_ssl.components.perturbations import CutOut, Photometric, cutout, mix_up, photometric
from nnunet_ssl.components.soft_pseudo_labels import soft_pseudo_labels
from nnunet_ssl.components.uncertainty import entropy_of_logits
from nnunet_ssl.core.phases import Phase
from nnunet_ssl.core.pretraining import MIM_PHASE, nnUNetTrainerSSLWithMIM
from nnunet_ssl.core.teachers import mc_dropout_probabilities
from nnunet_ssl.core.trainer import StepCost


class nnUNetTrainerMIRAU(nnUNetTrainerSSLWithMIM):
    ema_decay = 0.99  # the paper's only value (code v2: 0.999)
    network_dropout = Dropout(0.1, "decoder")  # MC dropout in the teacher, dropout in the student
    mc_passes = 8  # M (the paper's protocol, code v1; Table 1's best and code v2: 20)
    mc_chunk_size = None  # None: one forward of M x B samples, halved only on out-of-memory
    kappa = 0.5  # w = exp(-sigma / kappa) (code v2)
    # m = [sigma < tau_u], on sigma as the paper writes it (code v2 applies it to w, where it never bites); None: no mask
    tau_u = 0.15
    mean_target = False  # True: y~ = mu, w only as the loss weight (nnUNetTrainerMIRAU_MeanTarget)
    lambda_u, lambda_c, gamma = 1.0, 0.1, 0.01  # code v2
    lambda_dice = 0.0  # > 0: a soft Dice of p_s against y~ beside the soft CE (_MeanTargetDice; not the paper)
    rampup_fraction = 80 / 150  # T of beta(t), as a share of the ssl phase
    mim_fraction = 0.25  # share of the budget for the masked-image-modelling phase; 0: none (the _NoMIM ablation)
    # the strong view: colour jitter 0.3 with p 0.7 (code v2's ColorJitter), noise / blur as strong as UAMT's view
    strong_photometric = Photometric(brightness=0.3, contrast=0.3, gamma=(0.7, 1.5), blur_sigma=(0.5, 1.5),
                                     noise_std=0.1, p=0.7)
    strong_cutout = CutOut(max_holes=8, max_fraction=1 / 8, p=0.5)  # code v2's CoarseDropout at 256 px
    inference_weights = "teacher"
    needs_softmax_classes = True
    softmax_classes_reason = ("MIRA-U's soft pseudo labels give the mass their confidence removes to the background "
                              "class")
    ssl_log_keys = ("sup_loss", "pseudo_loss", "consistency_loss", "entropy_loss", "reconstruction_loss", "beta",
                    "kept_fraction", "confidence")
    unsupervised_terms = ("pseudo_loss", "consistency_loss", "entropy_loss")

    @classmethod
    def declare(cls) -> None:
        # the ssl phase's cost (the MIM phase costs 2 student passes): student fwd+bwd on the labeled batch and the
        # strong view; no-grad forwards: M teacher passes and the student's weak view
        cls.step_cost = StepCost(student_passes=2, teacher_passes=cls.mc_passes + 1)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.declare()

    def phases(self) -> List[Phase]:
        ssl = Phase("ssl", 1.0 - self.mim_fraction, fresh_weights=False, restart_optimizer=True)
        if not self.mim_fraction:
            return [ssl]
        # at least one epoch of pretraining (a short smoke-test budget would otherwise round it away)
        share = max(self.mim_fraction, 1 / self.num_epochs) if self.num_epochs > 1 else self.mim_fraction
        return [Phase(MIM_PHASE, share), ssl]

    # ------------------------------------------------------------------ the method
    def train_step(self, batch: dict) -> dict:
        if self.reconstructing:
            return self.mim_step(batch)
        x_l, y_l, x_w = self.step_batches(batch)
        self.zero_grad()
        with self.autocast():
            sup_loss = self.loss(self.network(x_l), y_l)  # L_sup, nnU-Net's loss
        self.backward(sup_loss)

        with torch.no_grad():
            x_s = self.strong_view(x_w, x_l)
            with self.autocast():
                mu, variance = mc_dropout_probabilities(self.teacher, x_w, self.mc_passes, self.output_probabilities,
                                                        self.mc_chunk_size)
                p_weak = self.student_probabilities(x_w)  # stop-gradient
            pseudo = soft_pseudo_labels(mu, variance, self.kappa, self.tau_u, self.mean_target)  # y~, w, m
        beta = self.phase_rampup(self.rampup_fraction)
        with self.autocast():
            logits_s = full_resolution(self.network(x_s)).float()
            p_strong = torch.softmax(logits_s, 1)
            weight = pseudo.mask * pseudo.confidence  # m w
            pseudo_loss = weighted_voxel_mean(self.lambda_u * soft_cross_entropy(logits_s, pseudo.target), weight)
            if self.lambda_dice:
                pseudo_loss = pseudo_loss + self.lambda_dice * soft_dice_loss(
                    p_strong, pseudo.target, weight, self.configuration_manager.batch_dice)
            pseudo_loss = self.unsupervised_term("pseudo_loss", pseudo_loss)
            consistency_loss = self.unsupervised_term(
                "consistency_loss", weighted_voxel_mean(self.lambda_c * squared_distance(p_strong, p_weak), weight),
                target_from=None)  # the target is the student's own prediction, without graph
            entropy_loss = self.unsupervised_term("entropy_loss", entropy_of_logits(logits_s).mean(), target_from=None)
        self.backward(beta * (pseudo_loss + consistency_loss) + self.gamma * entropy_loss)
        self.step()

        pseudo_loss, consistency_loss, entropy_loss = (t.detach() for t in (pseudo_loss, consistency_loss,
                                                                              entropy_loss))
        loss = sup_loss.detach() + beta * (pseudo_loss + consistency_loss) + self.gamma * entropy_loss
        return {"loss": loss.cpu().numpy(), "sup_loss": sup_loss.detach().cpu().numpy(),
                "pseudo_loss": float(pseudo_loss), "consistency_loss": float(consistency_loss),
                "entropy_loss": float(entropy_loss), "reconstruction_loss": float("nan"), "beta": beta,
                "kept_fraction": pseudo.kept_fraction(), "confidence": float(pseudo.confidence.mean())}

    def strong_view(self, x_w: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        """x_s, in x_w's geometry (so nothing to invert); x_l only for variants that blend it in."""
        return cutout(photometric(x_w, self.strong_photometric), self.strong_cutout)

    def output_probabilities(self, output) -> torch.Tensor:
        return self.probabilities(full_resolution(output))


nnUNetTrainerMIRAU.declare()


# ---------------------------------------------------------------------- the paper's student network
class nnUNetTrainerMIRAU_Hybrid(nnUNetTrainerMIRAU):
    """MIRA-U with the paper's hybrid CNN-Transformer student (nnunet_ssl.architectures.hybrid: the plans' conv
    encoder with windowed / shifted-window self-attention at the deeper stages, decoder skips fused by windowed
    cross-attention), dropout in its decoder stages as the plain network's. nnUNetv2_predict builds it through
    this method. A 3D plan is refused with the memory estimate when a training step would not fit a 24 GB
    machine: the labeled and the strong-view passes are back-propagated one after the other, so the step holds
    one batch's graph (the plans' batch size; the teacher's M passes keep none)."""

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        network = build_hybrid_network(configuration_manager, num_input_channels, num_output_channels,
                                       enable_deep_supervision, batch_size=configuration_manager.batch_size)
        return insert_dropout(network, cls.network_dropout)


# ---------------------------------------------------------------------- the variant and the paper's ablations
class nnUNetTrainerMIRAU_MeanTarget(nnUNetTrainerMIRAU):
    """The MC mean mu as the target, the confidence w only as the per-voxel loss weight (no push to background)."""
    mean_target = True


class nnUNetTrainerMIRAU_MeanTargetDice(nnUNetTrainerMIRAU_MeanTarget):
    """The mean target with nnU-Net's soft Dice of p_s against it (weighted by m w) beside the soft CE: the
    unlabeled loss in the supervised loss's form (Dice + CE). A test of why MIRA-U shrank the PH2 lesions that
    nnUNetTrainer already under-segments (a CE on soft targets follows the target's border, a foreground Dice
    leans it outward: nnunet_ssl.components.losses.soft_dice_loss); on PH2 they shrank still (README)."""
    lambda_dice = 1.0


class nnUNetTrainerMIRAU_NoUncertaintyMask(nnUNetTrainerMIRAU):
    """Table 5, "no uncertainty mask": every voxel kept (m = 1); w still weighs and scales the targets."""
    tau_u = None


class nnUNetTrainerMIRAU_NoMIM(nnUNetTrainerMIRAU):
    """Table 5, "no MIM": the semi-supervised phase over the whole budget, from nnU-Net's initialisation."""
    mim_fraction = 0.0


class nnUNetTrainerMIRAU_NoEntropy(nnUNetTrainerMIRAU):
    """Table 5, "no entropy loss": gamma = 0."""
    gamma = 0.0
    unsupervised_terms = ("pseudo_loss", "consistency_loss")  # L_ent is registered, with no weight


class nnUNetTrainerMIRAU_MeanTargetWeakView(nnUNetTrainerMIRAU_MeanTarget):
    """A diagnostic, not the paper: the student learns the mean target on the weak view itself (no strong
    photometric perturbation, no CutOut). On PH2 every MIRA-U form shrank the lesions; a student asked to match
    the teacher on a view whose faint lesion borders the perturbation has erased learns "background when in
    doubt" (the CE-optimal answer under lost information, background being the majority). This tests it."""
    strong_photometric = Photometric(p=0.0)
    strong_cutout = CutOut(p=0.0)


class nnUNetTrainerMIRAU_MeanTargetLabeledMix(nnUNetTrainerMIRAU_MeanTarget):
    """A diagnostic, not the paper: the strong view is first blended with a labeled image as SGRS's mix-up (eq.
    3-4, Beta(0.75, 0.75), lam >= 0.5), the target still the unlabeled image's. On PH2, SGRS without its mix-up
    (_NoMA) shrank the pool's lesions as every MIRA-U form did, and with it grew them; this asks whether the mix-up
    does the same for MIRA-U's loop. It does (the pool's lesions no longer shrink), and over two PH2 draws x two
    runs it gains +0.50 Dice points raw and +0.93 postprocessed over nnUNetTrainer, not significantly (README)."""
    mix_alpha = 0.75

    def strong_view(self, x_w, x_l):
        return super().strong_view(mix_up(x_w, x_l, self.mix_alpha)[0], x_l)


class nnUNetTrainerMIRAU_MeanTargetLabeledMixDice(nnUNetTrainerMIRAU_MeanTargetLabeledMix):
    """A diagnostic, not the paper: the labeled mix-up with nnU-Net's soft Dice beside the soft CE (as _MeanTargetDice).
    The one UAMT form that gains on PH2 (_LabeledMixFullWeight) learns its pseudo labels with CE + Dice at the
    supervised loss's weight; MIRA-U's CE alone, over the m w-weighted voxels, may move the student less. Without
    the mix-up the Dice term did not stop the shrinking (_MeanTargetDice); this asks whether the two together gain.
    In one PH2 run they gain as the mix-up alone does (+1.03 against +1.14 Dice points) and segment smaller (README)."""
    lambda_dice = 1.0
