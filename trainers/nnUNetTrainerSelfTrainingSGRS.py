"""Self-training whose round 0 is SGRS: a semi-supervised teacher as the pseudo-labeller.

    round 0:  f_0 = SGRS on D_L and D_U (nnUNetTrainerSGRS's step; its warm-up runs over round 0), keeping the
              EMA teacher f_0^T
    round k:  Y_U = argmax f_{k-1}^T(D_U)      (the EMA teacher, nnU-Net's sliding-window inference)
              f_k = nnU-Net's supervised step from scratch on D_L + (D_U, Y_U); an EMA teacher (restarted
              from the new weights) follows the student
    predict with f_R^T

Why: under one iteration budget, plain self-training pseudo-labels the pool with a supervised model trained for
half the budget, and on PH2 its pseudo labels (0.87 Dice) were worse than the supervised baseline's own test
Dice; round 1 made up that loss but no more. The round-0 teacher here has seen the unlabeled pool.
Rounds, validation on real labeled cases only, `--c` in any round, and the ST++ options (`labeled_share`,
`reliable_fraction`; snapshots then hold the teacher) are nnUNetTrainerSelfTraining's; a round's fresh start
restarts the EMA teacher (nnunet_ssl.core.phases).
"""
from nnunet_ssl.trainers.nnUNetTrainerSGRS import nnUNetTrainerSGRS
from nnunet_ssl.trainers.nnUNetTrainerSelfTraining import nnUNetTrainerSelfTraining


class nnUNetTrainerSelfTrainingSGRS(nnUNetTrainerSelfTraining, nnUNetTrainerSGRS):
    draws_unlabeled_batches = True  # SGRS's unlabeled batches in round 0
    inference_weights = "teacher"
    build_teacher = nnUNetTrainerSGRS.build_teacher  # the SSL core's EMA teacher, not self-training's None

    @property
    def ssl_log_keys(self):
        return nnUNetTrainerSGRS.ssl_log_keys if self.current_round == 0 else ("sup_loss",)

    @property
    def total_iterations(self) -> int:
        """SGRS's warm-up (warmup_fraction of this) is a fraction of round 0, the SGRS part of the budget."""
        return self.phase_starts[1] * self.num_iterations_per_epoch

    def train_step(self, batch: dict) -> dict:
        if self.current_round == 0:
            return super().train_step(batch)  # nnUNetTrainerSGRS
        # rounds >= 1: nnU-Net's loss on labeled + pseudo-labeled patches; step() also moves the EMA teacher
        x, y = self.labeled_batch(batch)
        self.zero_grad()
        with self.autocast():
            loss = self.loss(self.network(x), y)
        self.backward(loss)
        self.step()
        loss = loss.detach().cpu().numpy()
        return {"loss": loss, "sup_loss": loss}

    def pseudo_labeller(self):
        return self.inference_network()  # the inference choice (the EMA teacher by default) in self.network

    def pseudo_labeller_state(self) -> dict:
        return self.inference_state()  # what pseudo_labeller puts there, also with inference_weights = "student"
