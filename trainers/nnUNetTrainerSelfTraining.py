"""Self-training (Zhu & Tian, "A Simple Self-labeling Method for Semi-supervised Medical Image Segmentation",
FLARE 2022) inside nnU-Net.

    round 0:  f_0 = nnU-Net trained on the fold's labeled cases D_L
    round k:  Y_U = argmax f_{k-1}(D_U)   (nnU-Net's sliding-window inference on the preprocessed pool)
              f_k = nnU-Net trained from scratch on D_L + (D_U, Y_U)
    predict with f_R (checkpoint_final), R = rounds

The budget is nnU-Net's num_epochs: round 0 gets `first_stage_fraction` of the epochs, the rest is split
equally over the rounds. The rounds are phases of the SSL core (nnunet_ssl.core.phases): each starts with fresh
weights, optimizer, PolyLR and grad scaler; the step is nnUNetTrainer's own. The fold's validation cases are
always the real labeled ones. Round k's training set is written once to
<fold>/self_training/round_<k>/ (links to the preprocessed labeled cases and pool images, pseudo segmentations,
complete.json); the network that made it is kept as checkpoint_round_<k-1>.pth, and checkpoint_latest.pth is
written right after the reset, so `--c` resumes in any round and reuses a complete folder. From round 2 on,
`min_round_agreement` drops pool cases whose pseudo label changed too much since the previous round.

ST++ (Yang et al., CVPR 2022) variants: `labeled_share` draws that share of every round's samples from the
labeled cases (nnUNetTrainerSelfTrainingBalanced: 0.5), and `reliable_fraction` keeps in round 1 only the pool
cases whose predictions were most stable over round-0 snapshots (nnUNetTrainerSelfTrainingReliable: 0.5).
A teacher-student round 0 (nnUNetTrainerSelfTrainingSGRS) overrides the hooks `pseudo_labeller` and
`pseudo_labeller_state`.
"""
import json
import os
import uuid
from contextlib import nullcontext
from typing import List

import blosc2
import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join, write_pickle
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from tqdm import tqdm

from nnunet_ssl.architectures.common import unwrap
from nnunet_ssl.components.pseudo_labels import agreement, keep_most_stable, keep_stable, splits_with_pseudo_labeled
from nnunet_ssl.core.phases import Phase
from nnunet_ssl.core.trainer import nnUNetTrainerSSL
from nnunet_ssl.utilities.atomic import atomic_folder, link_file

MARKER = "complete.json"
DROPPED = "dropped"  # a round's pseudo labels left out of its training set, kept for the next round's comparison


class nnUNetTrainerSelfTraining(nnUNetTrainerSSL):
    draws_unlabeled_batches = False  # rounds >= 1 train on the pool's pseudo labels, round 0 on the labeled cases
    inference_weights = "student"
    rounds = 1  # pseudo-label + retrain rounds
    first_stage_fraction = 0.5  # share of num_epochs for round 0 (labeled only)
    # rounds >= 2: keep a pool case only if its pseudo label agrees (mean foreground Dice) at least this much with
    # the previous round's, as FLARE22's winners filtered unstable cases; None keeps every case
    min_round_agreement = None
    # rounds >= 1: the share of training samples drawn from the labeled cases; None draws every case equally
    # (4 labeled among 100 pseudo-labeled cases: 4%). ST++ (Yang et al., CVPR 2022) repeats the labeled cases
    # until they match the pseudo-labeled ones, i.e. 0.5
    labeled_share = None
    # round 1: keep only this share of the pool, the cases whose predictions were most stable over round 0
    # (ST++'s selective re-training: the mean agreement of `stability_snapshots` earlier round-0 checkpoints with
    # the final round-0 model's pseudo label); None keeps every case
    reliable_fraction = None
    stability_snapshots = 2  # taken at 1/3 and 2/3 of round 0
    ddp_unsupported = ("its rounds pseudo-label the whole pool inside the training, in one process, while the other "
                       "ranks would wait at DDP's next collective and time out; train it on one GPU, or use "
                       "`nnunet_ssl self-train`, which predicts the pool in parts (--num-parts/--part-id) on "
                       "several GPUs or machines")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # a new training (not --c) must not reuse the pseudo labels of an earlier one in the same folder
        self.training_id = uuid.uuid4().hex

    def build_teacher(self):
        return None  # each round trains one network; the previous round's labels the pool

    # ------------------------------------------------------------------ schedule
    def phases(self) -> List[Phase]:
        """Round 0, then each round from scratch (fresh weights, optimizer, PolyLR and grad scaler)."""
        later = (1.0 - self.first_stage_fraction) / self.rounds
        return [Phase("round 0", self.first_stage_fraction)] + \
            [Phase(f"round {k}", later, fresh_weights=True) for k in range(1, self.rounds + 1)]

    @property
    def current_round(self) -> int:
        return self.current_phase

    def round_folder(self, k: int) -> str:
        return join(self.output_folder, "self_training", f"round_{k}")

    @property
    def snapshot_epochs(self) -> List[int]:
        """Round-0 epochs after which the network is kept for the stability ranking (reliable_fraction)."""
        if self.reliable_fraction is None:
            return []
        first, n = self.phase_starts[1], self.stability_snapshots
        return sorted({max(0, round(first * j / (n + 1)) - 1) for j in range(1, n + 1)})

    def snapshot_file(self, epoch: int) -> str:
        return join(self.output_folder, "self_training", "round_0_snapshots", f"epoch_{epoch}.pth")

    # ------------------------------------------------------------------ set-up
    def on_train_start(self):
        super().on_train_start()
        if self.dataset_class is not nnUNetDatasetBlosc2:  # the round folders join labeled cases and the pool
            raise RuntimeError(f"{self.preprocessed_dataset_folder}: not in nnU-Net's Blosc2 format; re-run "
                               f"nnUNetv2_preprocess with nnU-Net 2.8")
        self.print_to_log_file(f"Self-training: {self.rounds} round(s), first epochs {self.phase_starts} of "
                               f"{self.num_epochs}")

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        labeled, n_pseudo, repeats = set(dataset_tr.identifiers), 0, 1
        if self.current_round > 0:  # validation stays the fold's real labeled cases
            folder = self.round_folder(self.current_round)
            keys = nnUNetDatasetBlosc2.get_identifiers(folder)
            n_pseudo = len(keys) - len(labeled)
            repeats = self.labeled_repeats(len(labeled), n_pseudo)
            # nnU-Net's loader draws identifiers uniformly, so a labeled case listed r times is drawn r times as often
            dataset_tr = nnUNetDatasetBlosc2(folder, [key for key in keys
                                                      for _ in range(repeats if key in labeled else 1)])
        bounds = self.phase_starts + [self.num_epochs]
        self.print_to_log_file(
            f"Self-training round {self.current_round}/{self.rounds}, epochs {bounds[self.current_round]}-"
            f"{bounds[self.current_round + 1] - 1}: training on {len(labeled)} labeled + {n_pseudo} pseudo-labeled "
            f"cases" + (f" (each labeled case drawn {repeats}x as often)" if repeats > 1 else "") +
            f", validating on {len(dataset_val.identifiers)} labeled case(s)")
        return dataset_tr, dataset_val

    def labeled_repeats(self, n_labeled: int, n_pseudo: int) -> int:
        """How often each labeled case is listed so that about `labeled_share` of the samples are labeled."""
        if self.labeled_share is None or n_pseudo == 0:
            return 1
        if not 0 < self.labeled_share < 1:
            raise ValueError(f"labeled_share must be in (0, 1) or None, got {self.labeled_share}")
        return max(1, round(self.labeled_share / (1 - self.labeled_share) * n_pseudo / n_labeled))

    # ------------------------------------------------------------------ round boundaries
    def on_epoch_end(self):
        if self.current_round == 0 and self.current_epoch in self.snapshot_epochs and self.local_rank == 0:
            path = self.snapshot_file(self.current_epoch)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.save(self.pseudo_labeller_state(), path + ".tmp")
            os.replace(path + ".tmp", path)
        super().on_epoch_end()

    def before_phase(self, k: int) -> None:
        """Round k's training set: the previous round's network pseudo-labels the pool (kept as
        checkpoint_round_<k-1>.pth); a complete folder of this training is reused."""
        folder = self.round_folder(k)
        if self.pseudo_labels_complete(folder):
            self.print_to_log_file(f"Round {k}: pseudo labels in {folder} are complete, reused")
        else:
            source = join(self.output_folder, f"checkpoint_round_{k - 1}.pth")
            self.save_checkpoint_at_epoch_start(source)
            with self.pseudo_labeller():
                self.write_round_folder(k, folder, source)

    def on_phase_start(self, k: int) -> None:
        """The data loaders of round k's training set (validation: the fold's real labeled cases)."""
        for loader in (self.dataloader_train, self.dataloader_val):
            if isinstance(loader, NonDetMultiThreadedAugmenter):
                loader._finish()
        self.dataloader_train, self.dataloader_val = self.get_dataloaders()

    def pseudo_labels_complete(self, folder: str) -> bool:
        marker = join(folder, MARKER)
        if not os.path.isfile(marker):
            return False
        with open(marker) as f:
            return json.load(f)["training_id"] == self.training_id

    def write_round_folder(self, k: int, folder: str, source_checkpoint: str) -> None:
        """The fold's labeled training cases (links) and the pool cases with the current network's pseudo
        segmentation, in nnU-Net's preprocessed format; written completely or not at all. From round 2 on,
        with `min_round_agreement` set, cases whose pseudo label changed too much since the previous round go
        to `dropped/` (kept there for the next round's comparison) instead of the training set."""
        tr_keys, val_keys = self.do_split()
        pool = nnUNetDatasetBlosc2(self.unlabeled_pool_folder)
        try:
            splits_with_pseudo_labeled([{"train": tr_keys, "val": val_keys}], pool.identifiers)
        except ValueError as e:
            raise RuntimeError(f"{self.unlabeled_pool_folder}: {e}") from None
        filtering = k >= 2 and self.min_round_agreement is not None
        selecting = k == 1 and self.reliable_fraction is not None
        lm = self.label_manager
        classes = lm.foreground_regions if lm.has_regions else lm.foreground_labels
        if lm.has_ignore_label:  # the data loader samples annotated voxels by this key, as nnU-Net's preprocessor
            classes = classes + [[-1] + lm.all_labels]
        scores = {}
        predictor = self.pseudo_label_predictor()
        with atomic_folder(folder) as tmp:
            os.makedirs(join(tmp, DROPPED))
            for case in tqdm(pool.identifiers, desc=f"Pseudo-labelling the unlabeled pool (round {k})"):
                data, nonzero_seg, _, properties = pool.load_case(case)
                seg = self.pseudo_segmentation(predictor, torch.from_numpy(data[:]))
                seg[(seg == 0) & (nonzero_seg[:] < 0)] = -1  # outside the nonzero mask, as crop_to_nonzero marks it
                if filtering:
                    scores[case] = agreement(self.previous_pseudo_segmentation(k, case), seg, lm.foreground_labels)
                properties["class_locations"] = \
                    self.configuration_manager.preprocessor_class._sample_foreground_locations(seg, classes)
                blocks, chunks = comp_blosc2_params(seg.shape, tuple(self.configuration_manager.patch_size),
                                                    seg.itemsize)
                nnUNetDatasetBlosc2.save_seg(seg, join(tmp, DROPPED, case + "_seg"), chunks, blocks)
                write_pickle(properties, join(tmp, DROPPED, case + ".pkl"))
            if selecting:
                scores = self.snapshot_stability(pool, predictor, join(tmp, DROPPED))
            kept, dropped = (keep_stable(scores, self.min_round_agreement) if filtering else
                             keep_most_stable(scores, self.reliable_fraction) if selecting else
                             (pool.identifiers, []))
            for case in kept:  # into the training set: the pool image, the pseudo segmentation and properties
                link_file(join(self.unlabeled_pool_folder, case + ".b2nd"), join(tmp, case + ".b2nd"))
                for suffix in ("_seg.b2nd", ".pkl"):
                    os.replace(join(tmp, DROPPED, case + suffix), join(tmp, case + suffix))
            for key in tr_keys:
                for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
                    link_file(join(self.preprocessed_dataset_folder, key + suffix), join(tmp, key + suffix))
            with open(join(tmp, MARKER), "w") as f:
                json.dump({"round": k, "labeled_cases": len(tr_keys), "pseudo_labeled_cases": len(kept),
                           "dropped_cases": dropped, "min_round_agreement": self.min_round_agreement if filtering
                           else None, "reliable_fraction": self.reliable_fraction if selecting else None,
                           ("stability_over_round_0" if selecting else "agreement_with_previous_round"): scores,
                           "source_checkpoint": source_checkpoint, "training_id": self.training_id}, f, indent=1)
        summary = f"Round {k}: pseudo labels of {len(pool.identifiers)} pool cases written to {folder}"
        if filtering:
            summary += (f"; kept {len(kept)} of {len(pool.identifiers)} (agreement with round {k - 1} >= "
                        f"{self.min_round_agreement}), dropped {len(dropped)}")
        if selecting:
            summary += (f"; kept the {len(kept)} of {len(pool.identifiers)} most stable over round 0 (reliable "
                        f"fraction {self.reliable_fraction}, stability >= {min(scores[c] for c in kept):.3f})")
        self.print_to_log_file(summary)

    # hooks for a round 0 that is itself a teacher-student method (nnUNetTrainerSelfTrainingSGRS)
    def pseudo_labeller(self):
        """Context in which self.network holds the weights that pseudo-label the pool."""
        return nullcontext()

    def pseudo_labeller_state(self) -> dict:
        """The weights `pseudo_labeller` puts in the network (a round-0 stability snapshot)."""
        return unwrap(self.network).state_dict()

    def pseudo_label_predictor(self) -> nnUNetPredictor:
        """nnU-Net's sliding-window predictor around the network being trained, with the trainer's mirroring."""
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=True, device=self.device, verbose=False,
                                    allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        return predictor

    def pseudo_segmentation(self, predictor: nnUNetPredictor, data: torch.Tensor) -> np.ndarray:
        """Y_U = argmax f(D_U) for one preprocessed case: (1, *spatial) int16 labels."""
        self.set_deep_supervision_enabled(False)  # the predictor expects one output
        try:
            logits = predictor.predict_sliding_window_return_logits(data).cpu()
        finally:
            self.set_deep_supervision_enabled(self.enable_deep_supervision)
        return self.label_manager.convert_logits_to_segmentation(logits).numpy().astype(np.int16)[None]

    def snapshot_stability(self, pool: nnUNetDatasetBlosc2, predictor: nnUNetPredictor, seg_folder: str) -> dict:
        """ST++'s reliability of each pool case: the mean agreement of the round-0 snapshots' predictions with
        the final round-0 pseudo label (in `seg_folder`). Leaves a snapshot's weights in the network: the caller
        resets it for the next round."""
        missing = [self.snapshot_file(e) for e in self.snapshot_epochs if not os.path.isfile(self.snapshot_file(e))]
        if missing:
            raise RuntimeError(f"round-0 snapshot(s) missing, needed to rank the pool by stability: {missing}")
        totals = dict.fromkeys(pool.identifiers, 0.0)
        for epoch in self.snapshot_epochs:
            unwrap(self.network).load_state_dict(torch.load(self.snapshot_file(epoch), map_location=self.device,
                                                            weights_only=True))
            for case in tqdm(pool.identifiers, desc=f"Stability: predicting the pool with the epoch-{epoch} snapshot"):
                seg = self.pseudo_segmentation(predictor, torch.from_numpy(pool.load_case(case)[0][:]))
                final = blosc2.open(join(seg_folder, case + "_seg.b2nd"), mode="r")[:]
                totals[case] += agreement(final, seg, self.label_manager.foreground_labels)
        return {case: total / len(self.snapshot_epochs) for case, total in totals.items()}

    def previous_pseudo_segmentation(self, k: int, case: str) -> np.ndarray:
        previous = self.round_folder(k - 1)
        path = join(previous, case + "_seg.b2nd")
        if not os.path.isfile(path):
            path = join(previous, DROPPED, case + "_seg.b2nd")
        return blosc2.open(path, mode="r")[:]

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_extras(self) -> dict:
        return {**super().checkpoint_extras(), "self_training_id": self.training_id}

    def load_checkpoint_extras(self, checkpoint: dict) -> None:
        super().load_checkpoint_extras(checkpoint)
        if "self_training_id" not in checkpoint:
            raise RuntimeError(f"checkpoint was not written by {self.__class__.__name__} (no self-training id)")
        self.training_id = checkpoint["self_training_id"]


class nnUNetTrainerSelfTrainingBalanced(nnUNetTrainerSelfTraining):
    """Self-training with half of every round's samples drawn from the labeled cases, as ST++ trains."""
    labeled_share = 0.5


class nnUNetTrainerSelfTraining_Round0Share75(nnUNetTrainerSelfTraining):
    """Round 0 gets 75 % of the epochs (default 50 %): the paper pseudo-labels with a converged model; under one
    budget a longer round 0 leaves a shorter round 1, which starts from scratch. On PH2 (two draws) it tied 0.5;
    0.9 lost 3.3 Dice points (README, "Results on real data")."""
    first_stage_fraction = 0.75


class nnUNetTrainerSelfTraining_Round0Share90(nnUNetTrainerSelfTraining):
    """Round 0 gets 90 % of the epochs (see nnUNetTrainerSelfTraining_Round0Share75)."""
    first_stage_fraction = 0.9


class nnUNetTrainerSelfTrainingReliable(nnUNetTrainerSelfTrainingBalanced):
    """ST++-style self-training in one round: the labeled cases (half of the samples) and the most stable half
    of the pool, ranked by how much round-0 snapshots at 1/3 and 2/3 agree with the final round-0 model."""
    reliable_fraction = 0.5
