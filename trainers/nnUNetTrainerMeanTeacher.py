"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) inside nnU-Net.

    L = L_sup(f_theta(x_l), y_l) + w(t) * || softmax f_theta(x_u) - softmax f_theta'(x_u + xi) ||^2
    theta'_t = a theta'_{t-1} + (1 - a) theta_t,        w(t) = w_max * exp(-5 (1 - t/T)^2)

L_sup is nnU-Net's Dice + CE with deep supervision; x_u is an nnU-Net-augmented unlabeled batch, xi is
Gaussian noise, so teacher and student see differently perturbed views of the same voxels.
"""

from nnunet_ssl.architectures.dropout import Dropout
from nnunet_ssl.components.losses import consistency_mse
from nnunet_ssl.components.perturbations import gaussian_noise
from nnunet_ssl.core.trainer import nnUNetTrainerSSL


class nnUNetTrainerMeanTeacher(nnUNetTrainerSSL):
    ema_decay = 0.99
    # a_t = min(1 - 1/(t+1), 0.99), as every reference code (UA-MT, SSL4MIS; reference-code-notes M4): the first
    # targets come from the student itself, not from a teacher that is still 0.99^t its random initialisation
    ema_warm_start = True
    consistency_weight = 0.1  # w_max, as in the UA-MT / SSL4MIS reference code
    consistency_rampup = 0.25  # T as a fraction of all training iterations
    noise_std, noise_clip = 0.1, 0.2
    ssl_log_keys = ("sup_loss", "consistency_loss", "consistency_weight")
    unsupervised_terms = ("consistency_loss",)

    def train_step(self, batch: dict) -> dict:
        x_l, y_l, x_u = self.step_batches(batch)
        self.zero_grad()
        with self.autocast():
            sup_loss = self.loss(self.network(x_l), y_l)
        self.backward(sup_loss)
        with self.autocast():
            p_teacher = self.teacher_probabilities(gaussian_noise(x_u, self.noise_std, self.noise_clip))
            consistency = self.unsupervised_term("consistency_loss",
                                                 consistency_mse(self.student_probabilities(x_u), p_teacher))
            weight = self.consistency_weight * self.rampup(self.consistency_rampup)
        self.backward(weight * consistency)
        self.step()
        loss = sup_loss.detach() + weight * consistency.detach()
        return {"loss": loss.cpu().numpy(), "sup_loss": sup_loss.detach().cpu().numpy(),
                "consistency_loss": consistency.detach().cpu().numpy(), "consistency_weight": weight}


# ---------------------------------------------------------------------- the reference codes' choices (M1, M2)
class nnUNetTrainerMeanTeacherDropout(nnUNetTrainerMeanTeacher):
    """Decoder dropout (p = 0.1) in the student: its prediction then differs from the teacher's target by a model
    perturbation, not only by input noise and EMA lag. Every reference network has dropout; nnU-Net's have none
    (reference-code-notes M1). The teacher predicts without dropout (eval mode)."""
    network_dropout = Dropout(0.1, "decoder")


class nnUNetTrainerMeanTeacherLongRamp(nnUNetTrainerMeanTeacher):
    """The consistency weight ramps up over the whole run, as in the UA-MT and SSL4MIS code (M2; ours: 25 %)."""
    consistency_rampup = 1.0
