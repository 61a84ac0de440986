"""SGRS-Net: Synergy-Guided Regional Supervision of pseudo labels (Wang et al., MICCAI 2025) inside nnU-Net.

Per iteration, with the EMA teacher f_T and the student f_S:
    PLG  Y = argmax softmax f_T(D_U)                                                      (eq. 1-2)
    MA   D_M = lam D_U + (1 - lam) D_L,  lam = max(b, 1 - b), b ~ Beta(alpha, alpha)      (eq. 3-4)
    SE   P_U, P_M = softmax f_S(D_U), softmax f_S(D_M)
         Delta = H(P_U) > tau  or  H(P_M) > tau, as max_c P < 0.575 (the same for C = 2)  (eq. 7)
         Omega = argmax P_U == argmax P_M, not Delta;  Theta = they differ, not Delta      (eq. 9)
    RLE  L_con = sum_{P in P_U, P_M} CE_Omega(P, Y) + Dice_Omega(P, Y)                    (eq. 13-14)
         L_NR  = sum_{P in P_U, P_M} CE_Theta^eps(P, Y) + Dice_Theta^eta(P, Y)            (eq. 15-18)
    L = L_sup + lambda(t) (L_con + L_NR),  lambda(t) = exp(-5 (1 - t / t_warm)^2), 1 after t_warm  (eq. 19-20)

L_sup is nnU-Net's own CE + Dice with deep supervision on D_L; D_U and D_L come with nnU-Net's augmentation.
The paper's tau (base-10 entropy 0.296, the probability threshold 0.425 of its code) is binary; as a confidence
(max_c P < 0.575) it is the same rule for two classes and still means "the argmax is in doubt" for many
(nnunet_ssl.components.regional.synergy_regions).

Deep supervision: the pseudo label and the three regions are voxel-level decisions made at full resolution;
downsampling a three-way partition would have to invent region membership at boundaries (a low-resolution
voxel covers voxels of several regions). So L_con and L_NR use the full-resolution output only; the deep
supervision heads are trained by L_sup on real labels, as in nnUNetTrainer.
"""
import torch

from nnunet_ssl.components.perturbations import gaussian_noise, mix_up
from nnunet_ssl.components.regional import (PAPER_MIN_CONFIDENCE, PAPER_TAU, regional_cross_entropy,
                                            regional_dice_loss, regional_dice_loss_per_class, synergy_regions)
from nnunet_ssl.core.trainer import StepCost, nnUNetTrainerSSL


class nnUNetTrainerSGRS(nnUNetTrainerSSL):
    ema_decay = 0.99  # the authors' code
    # a_t = min(1 - 1/(t+1), 0.99), as the authors' code (reference-code-notes S5): without it the teacher of a
    # short run still carries 0.99^t of its random initialisation when lambda(t) turns the pseudo labels on
    # (45 % at t = 80, the demo's warm-up end); over the README's 1500 PH2 iterations both are alike after ~500
    ema_warm_start = True
    # Delta (eq. 7), the voxels no prediction is sure of: "confidence", max_c p < min_confidence (the paper's
    # entropy threshold for two classes, and meaningful for many: reference-code-notes S3), or
    # "normalized_entropy", H / log C > tau (equal for two classes; for C > 2 it almost never fires)
    disregard_rule = "confidence"
    min_confidence = PAPER_MIN_CONFIDENCE  # 0.575 == base-10 entropy 0.296 (the paper's tau) for two classes
    tau = PAPER_TAU  # 0.9838, for "normalized_entropy"
    label_smoothing = 0.2  # epsilon of eq. 15
    dice_eta = 20.0  # eta of eq. 16
    mix_alpha = 0.75  # Beta(alpha, alpha) of eq. 3; the paper leaves it open, the authors' code uses 0.75
    warmup_fraction = 0.4  # t_warm / total iterations (the authors' code: 6000 of 15000)
    unsupervised_weight = 1.0  # lambda after warm-up (eq. 19)
    # (std, clip) of Gaussian noise on the teacher's view of D_U: the authors' code uses (0.1, 0.2)
    # (reference-code-notes S4); the paper has none. Off until PH2 decides.
    teacher_noise = None
    # The authors' code weighs the unsupervised CE by 0.5 and each regional Dice by 0.25 relative to L_sup
    # (reference-code-notes S1), and its regional Dice is per sample and class with smoothing 1 (Omega) and 20
    # (Theta) in numerator and denominator (S2). The defaults are the paper's equations read literally.
    unsup_ce_weight, unsup_dice_weight = 1.0, 1.0
    regional_dice = "joint"  # eq. 11/16: one Dice over the batch and all classes; "per_class": the authors' code
    omega_dice_smooth = 1.0  # s on Omega for "per_class" (the code's); Theta uses dice_eta
    regions_mode = "synergy"  # ablations: "con_everywhere" (L_con on all voxels), "nr_everywhere" (L_NR on all)
    # D_U and D_M each need a graph; with low_memory they are back-propagated one after the other (regions from
    # a no-grad forward of D_M, +1 forward) so peak memory stays nnUNetTrainer's. None: on for 3D, off for 2D.
    low_memory = None
    ssl_log_keys = ("sup_loss", "con_loss", "nr_loss", "lambda", "delta", "omega", "theta")
    unsupervised_terms = ("con_loss", "nr_loss")
    step_cost = StepCost(student_passes=3)  # D_L, D_U, D_M; one teacher pass
    needs_softmax_classes = True  # argmax pseudo labels

    # ------------------------------------------------------------------ the method
    def train_step(self, batch: dict) -> dict:
        x_l, y_l, x_u = self.step_batches(batch)
        self.zero_grad()
        with self.autocast():
            sup_loss = self.loss(self.network(x_l), y_l)  # L_sup (eq. 12), nnU-Net's loss
        self.backward(sup_loss)

        with self.autocast():
            teacher_view = x_u if self.teacher_noise is None else gaussian_noise(x_u, *self.teacher_noise)
            pseudo_label = self.teacher_probabilities(teacher_view).argmax(1)  # Y (eq. 1-2)
            x_m, to_u_geometry = self.mixed_view(x_u, x_l)  # D_M (eq. 3-4)
        weight = self.unsupervised_weight * self.rampup(self.warmup_fraction)  # lambda(t) (eq. 20)
        con_loss, nr_loss, regions = self.unlabeled_losses(x_u, x_m, to_u_geometry, pseudo_label, weight)
        self.step()

        loss = sup_loss.detach() + weight * (con_loss + nr_loss)
        return {"loss": loss.cpu().numpy(), "sup_loss": sup_loss.detach().cpu().numpy(),
                "con_loss": float(con_loss), "nr_loss": float(nr_loss), "lambda": weight, **regions.fractions()}

    def unlabeled_losses(self, x_u, x_m, to_u_geometry, pseudo_label, weight):
        """SE + RLE for P_U and P_M; accumulates lambda (L_con + L_NR) into the student's gradient."""
        if self.uses_low_memory():
            with torch.no_grad(), self.autocast():
                p_m_values = to_u_geometry(self.student_probabilities(x_m))
            with self.autocast():
                p_u = self.student_probabilities(x_u)
                regions = self.regions(p_u, p_m_values)
                con_u, nr_u = self.regional_losses(p_u, pseudo_label, regions)
            self.backward(weight * (con_u + nr_u))
            del p_u
            with self.autocast():
                con_m, nr_m = self.regional_losses(to_u_geometry(self.student_probabilities(x_m)), pseudo_label,
                                                   regions)
            self.backward(weight * (con_m + nr_m))
        else:
            with self.autocast():
                p_u, p_m = self.student_probabilities(x_u), to_u_geometry(self.student_probabilities(x_m))
                regions = self.regions(p_u, p_m)
                (con_u, nr_u), (con_m, nr_m) = (self.regional_losses(p, pseudo_label, regions) for p in (p_u, p_m))
            self.backward(weight * (con_u + nr_u + con_m + nr_m))
        return (con_u + con_m).detach(), (nr_u + nr_m).detach(), regions

    def regional_losses(self, probs, pseudo_label, regions):
        """L_c^Omega (eq. 13) and L_s^Theta (eq. 17) of one prediction; Delta contributes nothing."""
        omega, theta = regions.consistent, regions.inconsistent
        ce, dice = self.unsup_ce_weight, self.unsup_dice_weight
        con = (ce * regional_cross_entropy(probs, pseudo_label, omega)
               + dice * self.regional_dice_loss(probs, pseudo_label, omega, on_theta=False))
        nr = (ce * regional_cross_entropy(probs, pseudo_label, theta, self.label_smoothing)
              + dice * self.regional_dice_loss(probs, pseudo_label, theta, on_theta=True))
        return self.unsupervised_term("con_loss", con), self.unsupervised_term("nr_loss", nr)

    def regional_dice_loss(self, probs, target, region, on_theta: bool):
        """Eq. 11 (Omega) or eq. 16 (Theta, eta in the denominator); or the authors' per-class form."""
        if self.regional_dice == "joint":
            return regional_dice_loss(probs, target, region, self.dice_eta if on_theta else 0.0)
        if self.regional_dice == "per_class":
            return regional_dice_loss_per_class(probs, target, region,
                                                self.dice_eta if on_theta else self.omega_dice_smooth)
        raise ValueError(f"unknown regional_dice {self.regional_dice!r}")

    def regions(self, p_u, p_m):
        thresholds = {"confidence": {"min_confidence": self.min_confidence},
                      "normalized_entropy": {"tau": self.tau}}
        if self.disregard_rule not in thresholds:
            raise ValueError(f"unknown disregard_rule {self.disregard_rule!r}")
        regions = synergy_regions(p_u, p_m, **thresholds[self.disregard_rule])  # eq. 7-9
        if self.regions_mode == "synergy":
            return regions
        everywhere, nowhere = torch.ones_like(regions.consistent), torch.zeros_like(regions.consistent)
        if self.regions_mode == "con_everywhere":
            return type(regions)(disregarded=nowhere, consistent=everywhere, inconsistent=nowhere)
        if self.regions_mode == "nr_everywhere":
            return type(regions)(disregarded=nowhere, consistent=nowhere, inconsistent=everywhere)
        raise ValueError(f"unknown regions_mode {self.regions_mode!r}")

    def mixed_view(self, x_u, x_l):
        """D_M and the map that brings a prediction on D_M back onto D_U's voxels (identity for mix-up)."""
        x_m, _ = mix_up(x_u, x_l, self.mix_alpha)
        return x_m, lambda prediction: prediction

    def uses_low_memory(self) -> bool:
        if self.low_memory is None:
            return len(self.configuration_manager.patch_size) == 3
        return self.low_memory


# ---------------------------------------------------------------------- the paper's ablations (Table 5)
class nnUNetTrainerSGRS_NoMA(nnUNetTrainerSGRS):
    """Without mix augmentation: D_M is D_U flipped along its last axis (the prediction is flipped back)."""

    def mixed_view(self, x_u, x_l):
        return torch.flip(x_u, dims=(-1,)), lambda prediction: torch.flip(prediction, dims=(-1,))


class nnUNetTrainerSGRS_WeakMix(nnUNetTrainerSGRS):
    """A weaker mix-up: Beta(0.2, 0.2) gives the labeled image 10 % of D_M on average instead of 22 % (median lam
    0.98 against 0.79). On PH2 the mix-up turns the pseudo-label loop's shrinking (NoMA) into growth (halos on
    sharp lesions); this asks whether half the blend keeps the gains on diffuse lesions without the halos."""
    mix_alpha = 0.2


class nnUNetTrainerSGRS_ConEverywhere(nnUNetTrainerSGRS):
    """No synergy evaluation: L_con on every voxel (plain mean-teacher pseudo-labelling with mix-up)."""
    regions_mode = "con_everywhere"
    unsupervised_terms = ("con_loss",)  # L_NR has an empty region


class nnUNetTrainerSGRS_NREverywhere(nnUNetTrainerSGRS):
    """No synergy evaluation: the noise-robust L_NR on every voxel."""
    regions_mode = "nr_everywhere"
    unsupervised_terms = ("nr_loss",)  # L_con has an empty region



# ---------------------------------------------------------------------- the authors' code (reference-code-notes)
class nnUNetTrainerSGRS_AuthorsLoss(nnUNetTrainerSGRS):
    """The unsupervised loss as the authors' code weighs and computes it (S1, S2): the regional CE at 0.5 and each
    regional Dice at 0.25 relative to L_sup, the Dice per sample and class with smoothing in both sums."""
    unsup_ce_weight, unsup_dice_weight = 0.5, 0.25
    regional_dice = "per_class"
