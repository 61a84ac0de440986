"""Dual-network uncertainty-guided pseudo-labelling (Lu, Wu, Chaddad et al., KBS 2025, arXiv 2509.13084) inside
nnU-Net. The authors' public code does not train what the paper describes (its cross pseudo supervision and
prototype terms carry no gradient, its entropy filter runs on logits and ignores nothing); this is the paper's
intent as reconstructed in ../shared/papers/reference-code-notes.md, section 3c.

Two different networks from the same plans, each with nnU-Net's optimizer and PolyLR: A = the plans' PlainConvUNet,
B = nnU-Net's ResidualEncoderUNet with the same stages, features and strides (ResNet-34-like blocks per stage).
Both see the same nnU-Net-augmented labeled batch (x_l, y) and unlabeled batch x_u. Per iteration:

  L_sup,k = nnU-Net's loss (deep supervision) of network k on (x_l, y)
  winner w = argmin_k L_sup,k, loser l = the other                                       (dynamic competition)
  On x_u, with z_k the full-resolution logits, p_k = softmax z_k, H_k = H(p_k), Y_k = argmax z_k (no gradient):
    keep_v  = not (H_A,v in the top q % of H_A  and  H_B,v in the top q % of H_B)     (adaptive entropy masking)
    L_cps,k = sum_v keep_v CE(z_k, Y_other)_v / sum_v keep_v                            (N / N_kept rescaling)
    L_KL    = mean_v [exp(-KL_v) CE(z_l, Y_w)_v] + mean_v KL_v,
              KL_v = KL(softmax(z_w / T) || softmax(z_l))                                (loser learns from winner)
    L_proto = InfoNCE(f_l,v, prototypes; tau) over the ignored voxels v, prototypes c_c = mean of the loser's
              L2-normalised last decoder features f_l over the kept voxels with Y_w = c (detached)
  L_w = L_sup,w + L_cps,w
  L_l = L_sup,l + L_cps,l + L_KL + lambda_c(t) L_proto,   lambda_c(t) = 0.1 exp(-5 (1 - t/t_max)^2)
  both networks step.

Choices where the paper (binary, 3D) is silent: the pseudo label of the prototypes and of the ignored voxels is
the winner's argmax (the code's loser argmax would pull the loser towards its own guess); L_KL runs on the
unlabeled batch only (the code's labeled half has ground truth, which L_sup already gives); the code's cosine
agreement and "mistake" terms are not in the paper's description and are left out. Multi-class throughout.

Not the paper, and the default because PH2 decided it (README): both networks learn on each unlabeled image blended
with a labeled one, x_learn = lam x_u + (1 - lam) x_l (SGRS's mix-up, eq. 3-4, Beta(0.75, 0.75), lam >= 0.5), while
the pseudo labels, the entropy filter and the KL target come from a no-grad pass of both networks over x_u itself
(one more pass of each). In the paper's form (nnUNetTrainerDualNet_Paper: the networks learn on x_u, their targets
are that pass detached) the two networks agree by the end of a PH2 run (cps_loss ~0.001) and predict smaller
lesions than nnUNetTrainer; the blend keeps them apart and the lesions whole: +1.15 Dice points over nnUNetTrainer
pooled over two labeled draws x two runs (95 % CI +0.15 to +2.16), against +0.26 (-0.53 to +1.09) for the
paper's form over two runs of the first draw.

Memory: the labeled pass of both networks is back-propagated before the unlabeled pass starts, so at most two
networks' activations (two nnUNetTrainer steps) are alive at a time; the no-grad target pass keeps none.
Prediction: the mean of both networks' softmax by default; A alone and B alone are inference choices.
"""
import torch
import torch.distributed as dist

from nnunet_ssl.architectures.common import full_resolution, unwrap
from nnunet_ssl.architectures.multi_output import DecoderFeatures, NetworkEnsemble
from nnunet_ssl.architectures.plans import residual_encoder_network
from nnunet_ssl.components.cross_supervision import (class_prototypes, entropy_filter, kl_weighted_pseudo_label_loss,
                                                     masked_cross_entropy, prototype_infonce)
from nnunet_ssl.components.perturbations import mix_up
from nnunet_ssl.components.uncertainty import entropy
from nnunet_ssl.core.checkpoints import InferenceChoice
from nnunet_ssl.core.trainer import StepCost, nnUNetTrainerSSL

NETWORKS = ("a", "b")


class nnUNetTrainerDualNet(nnUNetTrainerSSL):
    entropy_ignore_percent = 20.0  # q: a voxel is ignored where both networks' entropies are in their top q %
    kl_temperature = 1.0  # T of the winner's softmax in KL_v (0.5: the code's value, which there did nothing)
    prototype_weight = 0.1  # lambda_c's maximum, reached at the end of the run
    prototype_temperature = 0.07  # tau
    prototype_max_voxels = 4096  # ignored voxels drawn per step for L_proto
    # Beta(alpha, alpha) of the labeled mix-up the networks learn on; None: the paper's form, they learn on x_u
    labeled_mix_alpha = 0.75
    inference_weights = "ensemble"
    needs_softmax_classes = True  # pseudo labels are argmax class maps
    ssl_log_keys = ("sup_loss_a", "sup_loss_b", "cps_loss_a", "cps_loss_b", "kl_loss", "kl_divergence",
                    "proto_loss", "proto_weight", "ignored_fraction", "a_wins")
    unsupervised_terms = ("cps_loss_a", "cps_loss_b", "kl_loss", "proto_loss")
    # per network: labeled + unlabeled (blend) passes, and the no-grad target pass over x_u
    step_cost = StepCost(student_passes=2, teacher_passes=1)

    # ------------------------------------------------------------------ networks, optimizers, inference
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        a = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                               num_output_channels, enable_deep_supervision)
        b = residual_encoder_network(configuration_manager, num_input_channels, num_output_channels,
                                     enable_deep_supervision)
        return NetworkEnsemble({"a": a, "b": b})

    def build_teacher(self):
        return None  # each network's targets come from the other

    def optimized_modules(self):
        return dict(unwrap(self.network).members)

    def inference_choices(self):
        return {"ensemble": InferenceChoice("student", (0.5, 0.5), "mean of both networks' probabilities"),
                "a": InferenceChoice("student", (1.0, 0.0), "network A, the plans' U-Net"),
                "b": InferenceChoice("student", (0.0, 1.0), "network B, the residual-encoder U-Net")}

    def initialize(self):
        was_initialized = self.was_initialized
        super().initialize()
        if not was_initialized:  # the loser's last decoder features, for L_proto (a hook: the networks unchanged)
            self.decoder_features = {k: DecoderFeatures(m) for k, m in self.optimized_modules().items()}

    # ------------------------------------------------------------------ the method
    def train_step(self, batch: dict) -> dict:
        x_l, y_l, x_u = self.step_batches(batch)
        self.zero_grad()
        with self.autocast():
            out = self.network(x_l, all_outputs=True)
            sup = {k: self.loss(out[k], y_l) for k in NETWORKS}  # L_sup,k
        self.backward(sup["a"] + sup["b"])
        del out
        self.forget_features()
        winner, loser = self.competition(sup)

        x_learn, x_target = self.unlabeled_views(x_u, x_l)
        with self.autocast():
            out = self.network(x_learn, all_outputs=True)
        z = {k: full_resolution(out[k]).float() for k in NETWORKS}
        f_loser = self.decoder_features[loser].take()
        self.forget_features()
        with torch.no_grad():
            z_target = self.target_logits(z, x_target)  # what each network's partner learns from
            keep = entropy_filter(*(entropy(self.probabilities(z_target[k])) for k in NETWORKS),
                                  self.entropy_ignore_percent)
            pseudo = {k: z_target[k].argmax(1) for k in NETWORKS}  # Y_k
        cps = {k: self.unsupervised_term(f"cps_loss_{k}", masked_cross_entropy(z[k], pseudo[other], keep),
                                         trains=(k,), target_from=other)
               for k, other in (("a", "b"), ("b", "a"))}
        kl_loss, kl_divergence = kl_weighted_pseudo_label_loss(z[loser], z_target[winner], self.kl_temperature)
        kl_loss = self.unsupervised_term("kl_loss", kl_loss, trains=(loser,), target_from=winner)
        prototypes, present = class_prototypes(f_loser, pseudo[winner], keep, z[loser].shape[1])
        proto_loss = self.unsupervised_term(
            "proto_loss", prototype_infonce(f_loser, pseudo[winner], ~keep, prototypes, present,
                                            self.prototype_temperature, self.prototype_max_voxels),
            trains=(loser,), target_from=winner)
        lam_c = self.prototype_weight * self.rampup(1.0)
        self.backward(cps["a"] + cps["b"] + kl_loss + lam_c * proto_loss)  # = L_w + L_l (the networks are apart)
        self.step()

        log = {f"{kind}_{k}": loss.item() for kind, losses in (("sup_loss", sup), ("cps_loss", cps))
               for k, loss in losses.items()}
        log.update({"kl_loss": kl_loss.item(), "kl_divergence": kl_divergence.item(), "proto_loss": proto_loss.item(),
                    "proto_weight": lam_c, "ignored_fraction": 1.0 - keep.float().mean().item(),
                    "a_wins": float(winner == "a")})
        log["loss"] = sum(log[k] for k in ("sup_loss_a", "sup_loss_b", "cps_loss_a", "cps_loss_b", "kl_loss")) + \
            lam_c * log["proto_loss"]
        return log

    def unlabeled_views(self, x_u: torch.Tensor, x_l: torch.Tensor):
        """(the unlabeled batch both networks learn on, the one their targets come from; None: the same pass)."""
        if self.labeled_mix_alpha is None:
            return x_u, None
        return mix_up(x_u, x_l, self.labeled_mix_alpha)[0], x_u

    def target_logits(self, z: dict, x_target) -> dict:
        """The full-resolution logits the targets come from: the learning pass's own (detached), or, given a target
        view, a no-grad pass of both networks over it."""
        if x_target is None:
            return {k: z[k].detach() for k in NETWORKS}
        with torch.no_grad(), self.autocast():
            out = self.network(x_target, all_outputs=True)
        self.forget_features()
        return {k: full_resolution(out[k]).float() for k in NETWORKS}

    def competition(self, sup: dict):
        """(winner, loser): the network with the lower supervised loss this iteration (A on a tie). Under DDP the
        ranks' losses are averaged first, so every rank trains the same network as the loser."""
        losses = torch.stack([sup[k].detach().float() for k in NETWORKS])
        if self.is_ddp:
            dist.all_reduce(losses)
        return ("a", "b") if losses[0] <= losses[1] else ("b", "a")

    def forget_features(self) -> None:
        """Drop the features the hooks kept from the last forward (and with them that pass's graph)."""
        for hook in self.decoder_features.values():
            hook.features = None


class nnUNetTrainerDualNet_Paper(nnUNetTrainerDualNet):
    """The paper's form: both networks learn on the unlabeled batch itself, and each one's targets are the other's
    prediction in that same pass (detached)."""
    labeled_mix_alpha = None
    step_cost = StepCost(student_passes=2, teacher_passes=0)


class nnUNetTrainerDualNet_LabeledMix(nnUNetTrainerDualNet):
    """The name the default's PH2 benchmark runs trained under (the labeled mix-up was a variant then); kept so that
    nnUNetv2_predict still finds the trainer of those model folders."""
