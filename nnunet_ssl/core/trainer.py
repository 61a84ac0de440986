"""Shared core of every semi-supervised trainer: the unlabeled batch stream, the EMA teacher, the student
step, SSL logging and checkpoints. A method subclasses `nnUNetTrainerSSL` and writes only `train_step`.

Everything labeled is nnUNetTrainer's own: plans, network, loss (deep supervision), data loaders,
augmentation, oversampling, validation, prediction.
"""
import os
from contextlib import contextmanager
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_ssl.core.checkpoints import edited_checkpoint
from nnunet_ssl.core.teachers import EMATeacher, unwrap
from nnunet_ssl.components.ramps import gaussian_rampup
from nnunet_ssl.data.pool import check_pool, preprocessed_pool_folder


def full_resolution(output):
    """The highest-resolution output of a deep-supervision list (or the tensor itself)."""
    return output[0] if isinstance(output, (list, tuple)) else output


# Optional training-length overrides for smoke tests and benchmarks run through the stock CLI
# (nnU-Net's own default is 1000 epochs x 250 iterations). They are written to the training log.
BUDGET_ENV = {"nnUNet_ssl_epochs": "num_epochs", "nnUNet_ssl_iters": "num_iterations_per_epoch",
              "nnUNet_ssl_val_iters": "num_val_iterations_per_epoch"}


def apply_budget_from_env(trainer: nnUNetTrainer) -> Dict[str, int]:
    applied = {}
    for env, attr in BUDGET_ENV.items():
        if os.environ.get(env):
            value = int(os.environ[env])
            if value < 1:
                raise ValueError(f"{env}={value}: must be >= 1")
            setattr(trainer, attr, value)
            applied[attr] = value
    return applied


def budget_and_pool_folder(trainer: nnUNetTrainer):
    """For a trainer's __init__: apply (and log) the budget from the environment; return the folder of the
    dataset's preprocessed unlabeled pool for the trainer's configuration (None without a preprocessed dataset)."""
    budget = apply_budget_from_env(trainer)
    if budget:
        trainer.print_to_log_file(f"Training length from environment: {budget}")
    if trainer.preprocessed_dataset_folder_base is None:
        return None
    return preprocessed_pool_folder(trainer.preprocessed_dataset_folder_base,
                                    trainer.configuration_manager.data_identifier)


def check_trainer_pool(trainer: nnUNetTrainer) -> int:
    """Fail before anything heavy happens when the pool is missing or stale; returns its number of cases."""
    return check_pool(trainer.unlabeled_pool_folder, trainer.plans_manager.plans, trainer.configuration_name,
                      trainer.plans_manager.dataset_name, trainer.plans_manager.plans_name)


class nnUNetTrainerSSL(nnUNetTrainer):
    """Base class. Class attributes are the method's hyperparameters; subclasses override them."""

    ema_decay: float = 0.99
    unlabeled_batch_size: int = None  # None: same as the labeled batch (per GPU under DDP)
    inference_weights: str = "teacher"  # what checkpoint['network_weights'] (-> nnUNetv2_predict) holds
    ssl_log_keys: Tuple[str, ...] = ()  # per-epoch means of these train_step outputs are logged and printed
    student_passes: int = 2  # student fwd+bwd per step (labeled + unlabeled): the compute floor of bench-step

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_pool_folder = budget_and_pool_folder(self)
        if self.inference_weights not in ("teacher", "student"):
            raise ValueError(f"inference_weights must be 'teacher' or 'student', got {self.inference_weights!r}")
        self.teacher = None
        self.dataloader_unlabeled = None
        self.iteration_in_epoch = 0

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        was_initialized = self.was_initialized
        super().initialize()
        if not was_initialized:
            self.teacher = EMATeacher(self.network, self.ema_decay).to(self.device)
            for key in self.ssl_log_keys:
                self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    def on_train_start(self):
        if self.is_cascaded:  # the pool has no previous-stage segmentations to feed the second stage
            raise RuntimeError(f"{self.__class__.__name__} does not support cascade configurations "
                               f"({self.configuration_name}); use 2d or 3d_fullres")
        # fail before anything heavy happens when the pool is missing or stale
        n_unlabeled = check_trainer_pool(self)
        super().on_train_start()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        self.print_to_log_file(f"Unlabeled pool: {n_unlabeled} cases from {self.unlabeled_pool_folder}, "
                               f"batch size {self.unlabeled_batch_size or self.batch_size}")

    def get_unlabeled_dataloader(self):
        """Unlabeled batches with nnU-Net's training augmentation, drawn uniformly from the pool.

        Each process draws its own random cases (DDP ranks included: nnU-Net does not seed the samplers),
        and the batch size is per process, like the labeled batch under DDP."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, self._get_deep_supervision_scales(), mirror_axes,
            dummy_2d, use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        dataset = nnUNetDatasetBlosc2(self.unlabeled_pool_folder)  # the format preprocess-unlabeled writes
        loader = nnUNetDataLoader(dataset, self.unlabeled_batch_size or self.batch_size, initial_patch_size,
                                  self.configuration_manager.patch_size, self.label_manager,
                                  oversample_foreground_percent=0.0, transforms=transforms)
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, n_proc, max(6, n_proc // 2), None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()

    # ------------------------------------------------------------------ the step's building blocks
    @property
    def total_iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    @property
    def global_iteration(self) -> int:
        return self.current_epoch * self.num_iterations_per_epoch + self.iteration_in_epoch

    def rampup(self, length_fraction: float) -> float:
        """Gaussian ramp-up over the first `length_fraction` of all training iterations."""
        return gaussian_rampup(self.global_iteration, length_fraction * self.total_iterations)

    def autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def labeled_batch(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        return data, target

    def unlabeled_batch(self) -> torch.Tensor:
        return next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)

    @torch.no_grad()
    def teacher_probabilities(self, data: torch.Tensor) -> torch.Tensor:
        """Full-resolution teacher probabilities (softmax, or sigmoid for region training); no graph."""
        return self.probabilities(full_resolution(self.teacher(data)))

    def student_probabilities(self, data: torch.Tensor) -> torch.Tensor:
        """Full-resolution student probabilities, with the graph (the unsupervised terms train the student)."""
        return self.probabilities(full_resolution(self.network(data)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes, or sigmoid for region training. Not LabelManager.apply_inference_nonlin:
        that one runs under no_grad and would silently cut the student's gradient."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one loss term (AMP-scaled on CUDA). Back-propagating the labeled and
        the unlabeled pass one after the other gives the gradient of their sum while only one pass's
        activations are alive at a time: peak memory stays that of nnUNetTrainer's step (a joint pass over
        both batches doubles it, and a 3D nnU-Net plan sized for its GPU or RAM then runs out)."""
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def step(self) -> None:
        """nnU-Net's clip and optimizer step, then the EMA teacher update."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.teacher.update(self.network)
        self.iteration_in_epoch += 1

    # ------------------------------------------------------------------ logging
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.iteration_in_epoch = 0

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        parts = []
        for key in self.ssl_log_keys:
            values = np.asarray(outputs[key], dtype=np.float64)
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, values)
                values = np.concatenate([np.atleast_1d(g) for g in gathered])
            value = float(np.mean(values))
            self.logger.log(key, value, self.current_epoch)
            parts.append(f"{key} {value:.4f}")
        if parts:
            self.print_to_log_file(", ".join(parts))

    # ------------------------------------------------------------------ which weights validate and predict
    @contextmanager
    def inference_network(self):
        """Run the block with the inference weights (teacher by default) in self.network."""
        if self.inference_weights == "student":
            yield
            return
        student_state = {k: v.clone() for k, v in unwrap(self.network).state_dict().items()}
        unwrap(self.network).load_state_dict(self.teacher.state_dict())
        try:
            yield
        finally:
            unwrap(self.network).load_state_dict(student_state)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._validation_context = self.inference_network()
        self._validation_context.__enter__()

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        self._validation_context.__exit__(None, None, None)
        super().on_validation_epoch_end(val_outputs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file(f"Final validation with the {self.inference_weights} weights")
        with self.inference_network():
            super().perform_actual_validation(save_probabilities)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus student and teacher weights. 'network_weights', the only entry
        nnUNetv2_predict reads, holds the inference weights (see `nnunet_ssl set-inference-weights`)."""
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        with edited_checkpoint(filename) as checkpoint:
            checkpoint["student_weights"] = checkpoint["network_weights"]
            checkpoint["teacher_weights"] = self.teacher.state_dict()
            checkpoint["network_weights"] = checkpoint[f"{self.inference_weights}_weights"]
            checkpoint["inference_weights"] = self.inference_weights

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        if "teacher_weights" not in checkpoint:
            raise RuntimeError("checkpoint has no teacher weights: it was not written by a nnunet_ssl trainer")
        unwrap(self.network).load_state_dict(checkpoint["student_weights"])
        self.teacher.load_state_dict(checkpoint["teacher_weights"])
        for key in self.ssl_log_keys:
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])
