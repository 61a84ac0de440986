"""Pool audit: how well the weights a trainer predicts with segment its unlabeled pool, epoch by epoch.

In a study on public data (PH2, LA, ...) the "unlabeled" cases have labels that training never sees. Given them
(`nnunet_ssl train --pool-labels FOLDER`, `nnunet_ssl benchmark --pool-labels FOLDER`), every epoch ends with a
prediction of the pool cases that have a label, by the trainer's inference choice (for the teacher-student
trainers the EMA teacher, the network whose predictions are the pseudo labels), with nnU-Net's own sliding-window
predictor on the cases preprocessed by nnU-Net's preprocessor with the training plans (image and label together,
so that the label is in the network's geometry). Per case: Dice and the predicted / true volume of the foreground;
per epoch: their summary, written to `pool_audit.json` and plotted in `pool_audit.png` in the fold folder, one
line in the training log. It shows what the test set shows only at the end, and where it starts: a pseudo-label
loop that shrinks (or grows) the structures epoch after epoch, a teacher worse than the supervised start.

The labels are read for this measurement only; nothing of them reaches the training.
"""
import json
import os
from contextlib import nullcontext
from typing import Dict, List, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nnunet_ssl.components.pseudo_labels import agreement, volume_ratio
from nnunet_ssl.core.progress import plot_ssl_progress
from nnunet_ssl.data.pool import find_unlabeled_cases
from nnunet_ssl.evaluation.metrics import FAILED_DICE, OVER, UNDER
from nnunet_ssl.utilities.atomic import write_json
from nnunet_ssl.utilities.inputs import UserError

AUDIT_FILE = "pool_audit.json"
AUDIT_PLOT = "pool_audit.png"
PLOTTED = ("dice_mean", "dice_median", "volume_ratio_median")


class PoolAuditError(UserError):
    """Bad --pool-labels input; the message names the folder or file."""


def case_scores(prediction: np.ndarray, truth: np.ndarray, labels: Sequence[int]) -> Dict[str, float]:
    """Dice and predicted / true volume of one case. Dice: the mean over the foreground labels present in either
    map (a label predicted that the truth lacks counts as Dice 0: pseudo_labels.agreement). Volume: the mean over
    the labels present in the truth. Both NaN when the truth has no foreground label."""
    ratio = volume_ratio(prediction, truth, labels)
    if not np.isfinite(ratio):
        return {"dice": float("nan"), "volume_ratio": float("nan")}
    return {"dice": agreement(prediction, truth, labels), "volume_ratio": ratio}


def summarize(per_case: Dict[str, Dict[str, float]]) -> dict:
    """The epoch's line: mean and median Dice, failed cases (Dice < FAILED_DICE, as the test-set summaries),
    median and mean volume ratio, cases under- and over-segmented by volume."""
    scored = [s for s in per_case.values() if np.isfinite(s["dice"])]
    if not scored:
        return {"n_cases": 0}
    dice = np.array([s["dice"] for s in scored])
    ratio = np.array([s["volume_ratio"] for s in scored])
    return {"n_cases": len(scored), "dice_mean": float(dice.mean()), "dice_median": float(np.median(dice)),
            "failed_cases": int((dice < FAILED_DICE).sum()), "volume_ratio_median": float(np.median(ratio)),
            "volume_ratio_mean": float(ratio.mean()), "under_segmented": int((ratio < UNDER).sum()),
            "over_segmented": int((ratio > OVER).sum())}


def pool_label_files(raw_dataset_folder: str, dataset_json: dict, labels_folder: str,
                     max_cases: int = None) -> Dict[str, tuple]:
    """Case id -> (image files, label file) for the unlabeled cases with a label `<case><file_ending>` in
    `labels_folder`, sorted by id; the first `max_cases` of them when given."""
    if not os.path.isdir(labels_folder):
        raise PoolAuditError(f"--pool-labels {labels_folder}: not a folder")
    cases = find_unlabeled_cases(raw_dataset_folder, dataset_json)
    ending = dataset_json["file_ending"]
    found = {case: (images, os.path.join(labels_folder, case + ending)) for case, images in cases.items()
             if os.path.isfile(os.path.join(labels_folder, case + ending))}
    if not found:
        first = next(iter(cases))
        raise PoolAuditError(f"--pool-labels {labels_folder}: no label for any of the {len(cases)} unlabeled cases of "
                             f"{os.path.join(raw_dataset_folder, 'imagesUnlabeled')} (expected e.g. {first}{ending})")
    if max_cases is not None:
        found = dict(list(found.items())[:max(1, max_cases)])
    return found


class PoolAudit:
    """The audit of one training: the labelled pool cases preprocessed once, then `record_epoch()` per epoch."""

    def __init__(self, trainer, labels_folder: str, max_cases: int = None):
        from nnunetv2.paths import nnUNet_raw

        self.trainer = trainer
        raw = os.path.join(nnUNet_raw, trainer.plans_manager.dataset_name)
        files = pool_label_files(raw, trainer.dataset_json, labels_folder, max_cases)
        self.labels = list(trainer.label_manager.foreground_labels)
        self.cases = [(case, *self._preprocess(images, label)) for case, (images, label) in
                      tqdm(files.items(), desc="pool audit: preprocessing", disable=len(files) < 20)]
        self.file = os.path.join(trainer.output_folder, AUDIT_FILE)
        self.epochs: List[dict] = []
        if os.path.isfile(self.file):  # a continued training (--c) keeps the epochs before its restart
            with open(self.file) as f:
                self.epochs = [e for e in json.load(f)["epochs"] if e["epoch"] < trainer.current_epoch]

    def _preprocess(self, images: List[str], label: str):
        t = self.trainer
        preprocessor = t.configuration_manager.preprocessor_class(verbose=False)
        try:
            data, seg, _ = preprocessor.run_case(images, label, t.plans_manager, t.configuration_manager,
                                                 t.dataset_json)
        except Exception as e:
            raise PoolAuditError(f"{label}: could not be preprocessed with {images[0]}: {type(e).__name__}: {e}")
        truth = seg[0].astype(np.int16)
        truth[truth < 0] = 0  # -1: outside the nonzero mask that cropping made, background
        return data.astype(np.float32), truth

    def predictor(self):
        """nnU-Net's predictor around the trainer's network, as nnU-Net's own final validation builds it."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        t = self.trainer
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=t.device, verbose=False,
                                    perform_everything_on_device=t.device.type == "cuda", allow_tqdm=False)
        predictor.manual_initialization(t.network, t.plans_manager, t.configuration_manager, None, t.dataset_json,
                                        type(t).__name__, None)
        return predictor

    def scores(self) -> Dict[str, Dict[str, float]]:
        """Dice and volume ratio per case, predicted with the trainer's inference choice (its student for a
        stock nnU-Net trainer); the network's mode and deep supervision are put back afterwards."""
        t = self.trainer
        weights = t.inference_network() if hasattr(t, "inference_network") else nullcontext()
        was_training = t.network.training
        predictor = self.predictor()
        per_case = {}
        t.set_deep_supervision_enabled(False)
        t.network.eval()
        try:
            with weights, torch.no_grad():
                for case, data, truth in self.cases:
                    logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(data))
                    prediction = t.label_manager.convert_logits_to_segmentation(logits.float().cpu())
                    per_case[case] = case_scores(np.asarray(prediction), truth, self.labels)
        finally:
            t.network.train(was_training)
            t.set_deep_supervision_enabled(t.enable_deep_supervision)
        return per_case

    def record_epoch(self) -> dict:
        t = self.trainer
        per_case = self.scores()
        summary = summarize(per_case)
        self.epochs.append({"epoch": t.current_epoch, **summary, "per_case": per_case})
        weights = getattr(t, "inference_weights", "student")
        write_json(self.file, {"trainer": type(t).__name__, "inference_weights": weights, "epochs": self.epochs})
        plot_ssl_progress({k: [e.get(k, float("nan")) for e in self.epochs] for k in PLOTTED}, (), PLOTTED,
                          os.path.join(t.output_folder, AUDIT_PLOT),
                          f"{type(t).__name__}: unlabeled pool, {summary['n_cases']} cases ({weights} weights)",
                          epochs=[e["epoch"] for e in self.epochs])  # not from 0 after a pretraining phase
        if summary["n_cases"]:
            t.print_to_log_file(
                f"pool audit ({summary['n_cases']} unlabeled cases, {weights} weights): Dice mean "
                f"{summary['dice_mean']:.4f} median {summary['dice_median']:.4f}, {summary['failed_cases']} failed; "
                f"volume predicted / true median {summary['volume_ratio_median']:.3f} ({summary['under_segmented']} "
                f"under {UNDER}, {summary['over_segmented']} over {OVER})")
        return summary


def install_pool_audit(trainer, labels_folder: str, max_cases: int = None) -> dict:
    """Make `trainer` audit its pool at the end of every epoch (before nnU-Net's on_epoch_end, which counts the
    epoch and checkpoints), except in a masked-image-modelling phase. The labels are preprocessed when training
    starts, so bad input fails before the first iteration. Returns a dict whose "last" is the latest epoch's summary."""
    state = {"audit": None, "last": None}
    on_train_start, on_epoch_end = trainer.on_train_start, trainer.on_epoch_end

    def start():
        on_train_start()
        if trainer.local_rank == 0:
            state["audit"] = PoolAudit(trainer, labels_folder, max_cases)

    def end():
        if state["audit"] is not None and getattr(trainer, "reconstructing", False):
            # a masked-image-modelling epoch trains no segmentation and leaves the teacher as it was built: its
            # score would be that of random output weights, every epoch the same
            trainer.print_to_log_file("pool audit: skipped in the masked-image-modelling phase (no segmentation "
                                      "is trained yet)")
        elif state["audit"] is not None:
            state["last"] = state["audit"].record_epoch()
        on_epoch_end()

    trainer.on_train_start, trainer.on_epoch_end = start, end
    return state
