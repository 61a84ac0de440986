"""Shared core of every semi-supervised trainer. A method subclasses `nnUNetTrainerSSL` and writes `train_step`;
what differs between methods is stated through seams, each with nnU-Net's own behaviour as the default:

  network     build_network_architecture (nnU-Net's; `nnUNetv2_predict` calls the same one), optionally with
              dropout (`network_dropout`) or a multi-output wrapper from nnunet_ssl.architectures
  optimizers  optimized_modules(): every entry gets nnU-Net's optimizer and LR schedule; one step() steps all
  teacher     build_teacher(): an EMA copy of the student by default, None, or any module; update_teacher()
  inference   inference_choices(): the named weights (+ output mix) a checkpoint can serve
  checkpoint  checkpoint_extras() / load_checkpoint_extras(): each class adds what it owns, one write per save
  phases      phases(): shares of the budget with fresh or carried-over weights and optimizer restarts
  cost        step_cost: the passes a step needs (bench-step's compute floor)

Everything labeled is nnUNetTrainer's own: plans, loss (deep supervision), data loaders, augmentation,
oversampling, validation, prediction.
"""
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import TORCH_HAS_OLD_GRADSCALER, GradScaler, nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ssl.architectures.common import full_resolution, set_deep_supervision, unwrap
from nnunet_ssl.architectures.dropout import Dropout, insert_dropout
from nnunet_ssl.architectures.multi_output import MultiOutputNetwork
from nnunet_ssl.components.ramps import gaussian_rampup
from nnunet_ssl.core.checkpoints import InferenceChoice, choices_entry, compose_weights, write_checkpoint
from nnunet_ssl.core.phases import Phase, PhasePolyLR, check_phase_starts, phase_starts
from nnunet_ssl.core.progress import plot_ssl_progress
from nnunet_ssl.core.teachers import EMATeacher
from nnunet_ssl.data.pool import check_pool, preprocessed_pool_folder
from nnunet_ssl.utilities.inputs import UserError

# Optional training-length overrides for smoke tests and benchmarks run through the stock CLI
# (nnU-Net's own default is 1000 epochs x 250 iterations), and how often checkpoint_latest.pth is written
# (nnU-Net: every 50 epochs; --c after a crash resumes from the last one). They are written to the training log.
BUDGET_ENV = {"nnUNet_ssl_epochs": "num_epochs", "nnUNet_ssl_iters": "num_iterations_per_epoch",
              "nnUNet_ssl_val_iters": "num_val_iterations_per_epoch", "nnUNet_ssl_save_every": "save_every"}


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


class DDPUnsupportedError(UserError):
    """The trainer cannot train under DDP (nnUNetv2_train -num_gpus > 1); the message says why and what to use."""


class RegionTrainingUnsupportedError(UserError):
    """The trainer's targets are argmax class maps; a region-based (sigmoid) dataset has none to give."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite: training stops before such weights reach a checkpoint."""


@dataclass(frozen=True)
class StepCost:
    """The passes one training step needs, each over one batch of the labeled batch size: bench-step's compute
    floor. `student_passes` forward+backward passes through each network of optimized_modules(), and
    `teacher_passes` no-grad forwards of the teacher (MC dropout: one per stochastic pass; a trainer without a
    teacher: of its network, both members of a two-network method at once)."""
    student_passes: int = 2  # labeled + unlabeled
    teacher_passes: int = 1


@dataclass
class UnsupervisedTerm:
    """One unsupervised loss term of a step, with its graph until the next backward: `trains` names the
    optimized modules it should train, `target_from` the module (or "teacher") whose output is its target, or a
    submodule of one by its path ("network.heads.aspp": another head of the same network); None where no other
    module provides it (an entropy term; the trained network's own stop-gradient prediction)."""
    name: str
    value: torch.Tensor
    trains: Tuple[str, ...]
    target_from: Optional[str]


class nnUNetTrainerSSL(nnUNetTrainer):
    """Base class. Class attributes are the method's hyperparameters; subclasses override them."""

    ema_decay: float = 0.99
    ema_warm_start: bool = False  # a_t = min(1 - 1/(t+1), ema_decay), as in the UA-MT / SSL4MIS / SGRS code
    network_dropout: Optional[Dropout] = None  # e.g. Dropout(0.1, "decoder"); nnU-Net's networks have none
    draws_unlabeled_batches: bool = True  # the unlabeled batch stream (self-training reads the pool itself)
    unlabeled_batch_size: int = None  # None: same as the labeled batch (per GPU under DDP)
    inference_weights: str = "teacher"  # the inference choice in checkpoint['network_weights'] (-> nnUNetv2_predict)
    ssl_log_keys: Tuple[str, ...] = ()  # per-epoch means of these train_step outputs are logged and printed
    # the logged keys that are unsupervised losses: train_step registers each with unsupervised_term(), and the
    # contract test checks that it trains the network it names and sends no gradient into its target's provider
    unsupervised_terms: Tuple[str, ...] = ()
    step_cost: StepCost = StepCost()
    # why the trainer cannot run under DDP (-num_gpus > 1), None where it can: it then refuses with this reason
    ddp_unsupported: Optional[str] = None
    # the method's targets are argmax class maps (pseudo labels, another network's prediction): it then refuses
    # region-based datasets (dataset.json with regions_class_order), whose outputs are independent sigmoids,
    # giving `softmax_classes_reason` as the cause
    needs_softmax_classes: bool = False
    softmax_classes_reason: str = "the method's targets are argmax class maps"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        budget = apply_budget_from_env(self)
        if budget:
            self.print_to_log_file(f"Training length from environment: {budget}")
        self.unlabeled_pool_folder = None if self.preprocessed_dataset_folder_base is None else \
            preprocessed_pool_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier)
        self.teacher = None
        self.optimizers, self.lr_schedulers = {}, {}
        self.dataloader_unlabeled = None
        self.iteration_in_epoch = 0
        self.current_phase = 0
        self.pending_terms: List[UnsupervisedTerm] = []

    # ------------------------------------------------------------------ network seam
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's network from the plans, with `network_dropout` if set. A classmethod (nnU-Net's is static)
        so that class attributes shape the network; nnUNetv2_predict calls it the same way."""
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
        return network if cls.network_dropout is None else insert_dropout(network, cls.network_dropout)

    @staticmethod
    def ddp_wrapper(network: DDP) -> DDP:
        """nnU-Net's DDP wrapper again, with unused-parameter detection. An unsupervised term reads only the
        full-resolution output (or one network, or one head): in its backward the deep-supervision heads get no
        gradient, and DDP without detection stops at the next step ("Expected to have finished reduction in the
        prior iteration"). Parameters unused in a backward keep the gradient the other backward gave them. The
        first wrapper's gradient hooks go with it."""
        return DDP(network.module, device_ids=network.device_ids, find_unused_parameters=True)

    def fresh_network(self) -> nn.Module:
        network = self.build_network_architecture(self.plans_manager, self.configuration_manager,
                                                  self.num_input_channels, self.label_manager.num_segmentation_heads,
                                                  self.enable_deep_supervision)
        self._set_output_nonlinearity(network)
        return network

    def _set_output_nonlinearity(self, network: nn.Module) -> None:
        """A multi-output network mixes probabilities: sigmoid ones for region training (kept in its state, so
        nnUNetv2_predict mixes the same way)."""
        if isinstance(unwrap(network), MultiOutputNetwork):
            unwrap(network).sigmoid_outputs.fill_(self.label_manager.has_regions)

    def set_deep_supervision_enabled(self, enabled: bool):
        set_deep_supervision(self.network, enabled)  # nnU-Net's expects network.decoder; wrappers have several

    # ------------------------------------------------------------------ optimizer seam
    def optimized_modules(self) -> Dict[str, nn.Module]:
        """The modules that each get nnU-Net's optimizer and LR schedule (configure_optimizers). Default: the
        whole network, i.e. nnUNetTrainer's own optimizer."""
        return {"network": unwrap(self.network)}

    def configure_network_optimizers(self) -> None:
        """One optimizer and LR scheduler per optimized module, and a new grad scaler. The first module's are
        nnU-Net's `self.optimizer` / `self.lr_scheduler` (its checkpoint and epoch code use those). One grad scaler
        serves all optimizers: a loss that reaches several networks is scaled once, and each optimizer is unscaled
        and stepped by the same scaler (PyTorch AMP's rule for several models and optimizers)."""
        modules = self.optimized_modules()
        self.optimizers, self.lr_schedulers = {}, {}
        network = self.network
        try:
            for name, module in modules.items():
                self.network = module  # configure_optimizers (nnU-Net's, or a variant's) reads self.network
                self.optimizers[name], self.lr_schedulers[name] = self.configure_optimizers()
        finally:
            self.network = network
        first = next(iter(modules))
        self.optimizer, self.lr_scheduler = self.optimizers[first], self.lr_schedulers[first]
        if self.grad_scaler is not None:
            self.grad_scaler = GradScaler() if TORCH_HAS_OLD_GRADSCALER else GradScaler("cuda")

    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()
        restarts = [s for s, p in zip(self.phase_starts, self.phases()) if p.restart_optimizer or s == 0]
        if len(restarts) > 1:
            lr_scheduler = PhasePolyLR(optimizer, self.initial_lr, restarts + [self.num_epochs])
        return optimizer, lr_scheduler

    # ------------------------------------------------------------------ teacher seam
    def build_teacher(self) -> Optional[nn.Module]:
        """The module that provides targets: an EMA copy of the student by default; None for methods without a
        teacher. Called at initialisation and at the start of a phase with fresh weights."""
        return EMATeacher(self.network, self.ema_decay, self.ema_warm_start).to(self.device)

    def update_teacher(self) -> None:
        """After every optimizer step: the EMA update (its warm start counts the steps of the current phase)."""
        if isinstance(self.teacher, EMATeacher):
            self.teacher.update(self.network, step=self.iteration_in_phase)

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        was_initialized = self.was_initialized
        super().initialize()
        if not was_initialized:
            if self.is_ddp:
                self.network = self.ddp_wrapper(self.network)
            self._set_output_nonlinearity(self.network)
            if list(self.optimized_modules()) == ["network"]:  # nnU-Net's optimizer, as super() built it
                self.optimizers, self.lr_schedulers = {"network": self.optimizer}, {"network": self.lr_scheduler}
            else:
                self.configure_network_optimizers()
            self.teacher = self.build_teacher()
            choices = self.inference_choices()
            if self.inference_weights not in choices:
                raise ValueError(f"{self.__class__.__name__}: inference_weights {self.inference_weights!r} is not one "
                                 f"of its inference choices {sorted(choices)}")
            for key in self.ssl_log_keys:
                self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    def on_train_start(self):
        if self.is_ddp and self.ddp_unsupported:
            raise DDPUnsupportedError(f"{self.__class__.__name__} does not train with -num_gpus > 1: "
                                      f"{self.ddp_unsupported}")
        if self.needs_softmax_classes and self.label_manager.has_regions:
            raise RegionTrainingUnsupportedError(
                f"{self.__class__.__name__}: this dataset uses region-based (sigmoid) training; "
                f"{self.softmax_classes_reason}, so it needs softmax classes (a dataset.json without "
                f"regions_class_order)")
        if self.is_cascaded:  # the pool has no previous-stage segmentations to feed the second stage
            raise RuntimeError(f"{self.__class__.__name__} does not support cascade configurations "
                               f"({self.configuration_name}); use 2d or 3d_fullres")
        check_phase_starts(self.phase_starts, self.num_epochs, self.phases())
        # fail before anything heavy happens when the pool is missing or stale
        n_unlabeled = check_pool(self.unlabeled_pool_folder, self.plans_manager.plans, self.configuration_name,
                                 self.plans_manager.dataset_name, self.plans_manager.plans_name)
        super().on_train_start()
        if self.current_epoch == 0 and self.teacher is not None:
            # a new training: `nnUNetv2_train -pretrained_weights` loads into the student after initialize() built
            # the teacher, and a teacher left at the random start would feed targets from it for many steps
            self.teacher = self.build_teacher()
        if self.draws_unlabeled_batches:
            self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        self.print_to_log_file(f"Unlabeled pool: {n_unlabeled} cases from {self.unlabeled_pool_folder}" +
                               (f", batch size {self.unlabeled_batch_size or self.batch_size}"
                                if self.draws_unlabeled_batches else ""))

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

    # ------------------------------------------------------------------ phases
    def phases(self) -> List[Phase]:
        """The phases of the training, in order; default one phase: nnU-Net's schedule."""
        return [Phase("training", 1.0)]

    @property
    def phase_starts(self) -> List[int]:
        return phase_starts([p.share for p in self.phases()], self.num_epochs)

    def phase_of(self, epoch: int) -> int:
        return int(np.searchsorted(self.phase_starts, epoch, side="right")) - 1

    def on_epoch_start(self):
        while self.current_phase < self.phase_of(self.current_epoch):
            self.start_phase(self.current_phase + 1)
        super().on_epoch_start()

    def start_phase(self, k: int) -> None:
        """Enter phase k: before_phase (the previous phase's weights are still in place), then fresh weights and a
        new teacher and/or new optimizers as the phase says, on_phase_start, and checkpoint_latest, so that --c
        resumes inside phase k."""
        self.before_phase(k)
        phase = self.phases()[k]
        self.current_phase = k  # the seams called below (build_teacher, optimized_modules) build for phase k
        if phase.fresh_weights:  # nnU-Net's initialisation of new networks, loaded into the modules being trained
            unwrap(self.network).load_state_dict(self.fresh_network().state_dict())
            if self.is_ddp:  # each rank drew its own initialisation, and DDP syncs gradients, never weights
                for tensor in unwrap(self.network).state_dict().values():
                    dist.broadcast(tensor, src=0)
            self.teacher = self.build_teacher()
        if phase.restart_optimizer:
            self.configure_network_optimizers()
        self._best_ema = None  # checkpoint_best is chosen within the last phase, never a model of an earlier one
        self.on_phase_start(k)
        self.save_checkpoint_at_epoch_start(join(self.output_folder, "checkpoint_latest.pth"))
        self.print_to_log_file(f"Phase {k} ({phase.name}) from epoch {self.phase_starts[k]}")

    def before_phase(self, k: int) -> None:
        """Hook: phase k is about to start."""

    def on_phase_start(self, k: int) -> None:
        """Hook: phase k has started (weights, teacher and optimizers are those of phase k)."""

    def save_checkpoint_at_epoch_start(self, filename: str) -> None:
        self.current_epoch -= 1  # nnU-Net stores current_epoch + 1, the epoch to resume at
        self.save_checkpoint(filename)
        self.current_epoch += 1

    # ------------------------------------------------------------------ the step's building blocks
    @property
    def total_iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    @property
    def global_iteration(self) -> int:
        return self.current_epoch * self.num_iterations_per_epoch + self.iteration_in_epoch

    @property
    def iteration_in_phase(self) -> int:
        return self.global_iteration - self.phase_starts[self.current_phase] * self.num_iterations_per_epoch

    def rampup(self, length_fraction: float) -> float:
        """Gaussian ramp-up over the first `length_fraction` of all training iterations."""
        return gaussian_rampup(self.global_iteration, length_fraction * self.total_iterations)

    @property
    def phase_iterations(self) -> int:
        bounds = self.phase_starts + [self.num_epochs]
        return (bounds[self.current_phase + 1] - bounds[self.current_phase]) * self.num_iterations_per_epoch

    def phase_rampup(self, length_fraction: float) -> float:
        """Gaussian ramp-up over the first `length_fraction` of the current phase's iterations (a method whose
        schedule is stated for its semi-supervised stage, after a pretraining phase)."""
        return gaussian_rampup(self.iteration_in_phase, length_fraction * self.phase_iterations)

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

    def step_batches(self, batch: dict) -> Tuple[torch.Tensor, object, torch.Tensor]:
        """(x_l, y_l, x_u): the labeled batch as nnUNetTrainer makes it (deep-supervision targets) and an
        unlabeled batch from the pool, on the device."""
        x_l, y_l = self.labeled_batch(batch)
        return x_l, y_l, self.unlabeled_batch()

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

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def unsupervised_term(self, name: str, value: torch.Tensor, trains: Tuple[str, ...] = None,
                          target_from: Optional[str] = "teacher") -> torch.Tensor:
        """Returns `value` unchanged; records it as the unsupervised term `name` (one of `unsupervised_terms`)
        until the next backward, so that the contract test can check where its gradient goes."""
        self.pending_terms.append(UnsupervisedTerm(name, value, tuple(trains or self.optimized_modules()),
                                                   target_from))
        return value

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one loss term (AMP-scaled on CUDA). Back-propagating the labeled and
        the unlabeled pass one after the other gives the gradient of their sum while only one pass's
        activations are alive at a time: peak memory stays that of nnUNetTrainer's step (a joint pass over
        both batches doubles it, and a 3D nnU-Net plan sized for its GPU or RAM then runs out)."""
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()
        self.pending_terms = []

    def step(self, ends_iteration: bool = True) -> None:
        """nnU-Net's clip and optimizer step for every optimized module, then the teacher update. A method with
        several optimizer steps per iteration passes ends_iteration=False to all but the last: the iteration
        count (ramps, the EMA warm start) advances once per iteration."""
        modules = self.optimized_modules()
        for name, optimizer in self.optimizers.items():
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(modules[name].parameters(), 12)
            if self.grad_scaler is not None:
                self.grad_scaler.step(optimizer)
            else:
                optimizer.step()
        if self.grad_scaler is not None:
            self.grad_scaler.update()
        self.update_teacher()
        if ends_iteration:
            self.iteration_in_epoch += 1

    # ------------------------------------------------------------------ logging
    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # nnU-Net: network.train(), self.lr_scheduler.step(epoch)
        for scheduler in self.lr_schedulers.values():
            if scheduler is not self.lr_scheduler:
                scheduler.step(self.current_epoch)
        self.iteration_in_epoch = 0

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        self.stop_on_non_finite_loss(outputs)
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

    def on_epoch_end(self):
        if self.local_rank == 0 and self.ssl_log_keys:
            self.plot_ssl_progress()
        super().on_epoch_end()

    def plot_ssl_progress(self) -> None:
        """progress_ssl.png next to nnU-Net's progress.png: the losses (supervised and each unsupervised term) in
        one panel, the other logged keys (ramp weights, thresholds, fractions) in another."""
        logged = self.logger.local_logger.my_fantastic_logging
        losses = [k for k in self.ssl_log_keys if k.endswith("loss") or k in self.unsupervised_terms]
        others = [k for k in self.ssl_log_keys if k not in losses]
        plot_ssl_progress({k: logged.get(k, []) for k in self.ssl_log_keys}, losses, others,
                          join(self.output_folder, "progress_ssl.png"), self.__class__.__name__)

    def stop_on_non_finite_loss(self, outputs: dict) -> None:
        """nnU-Net trains on after a NaN loss, and a semi-supervised step whose pool or targets went wrong ends in
        NaN weights that validate at Dice 0 and exit 0. Stop instead, at the end of the epoch (before validation
        and before this epoch's checkpoint): the epoch's mean loss, gathered over DDP ranks by nnU-Net, so that
        every rank stops together."""
        if np.isfinite(self.logger.local_logger.my_fantastic_logging["train_losses"][-1]):
            return
        terms = {key: np.asarray(outputs[key], dtype=np.float64).reshape(len(outputs[key]), -1)
                 for key in ("loss",) + tuple(self.ssl_log_keys) if key in outputs}
        # a term non-finite in an iteration whose loss is finite is one this phase does not compute (MIRA-U logs
        # reconstruction_loss as NaN in its ssl phase): naming it would hide the term that did go wrong
        loss_finite = np.isfinite(terms["loss"]).all(1)  # nnU-Net's train_step always returns "loss"
        terms = {key: v for key, v in terms.items() if np.isfinite(v[loss_finite]).all()}
        first = min((int(np.argmax(~np.isfinite(v).all(1))) for v in terms.values() if not np.isfinite(v).all()),
                    default=None)
        bad = [key for key, v in terms.items() if first is not None and not np.isfinite(v[first]).all()]
        where = f"first at iteration {first} of the epoch, in {', '.join(bad)}" if bad else "on another DDP rank"
        raise NonFiniteLossError(
            f"{self.__class__.__name__}: the training loss became non-finite in epoch {self.current_epoch} ({where}). "
            f"Stopped before validating or checkpointing these weights; {self.output_folder}/checkpoint_latest.pth, "
            f"if present, holds the last checkpoint before. Usual causes: NaN or infinite voxels in an image "
            f"(nnUNetv2_plan_and_preprocess --verify_dataset_integrity and nnunet_ssl preprocess-unlabeled check "
            f"them), a too high learning rate or loss weight, or fp16 overflow under AMP.")

    # ------------------------------------------------------------------ inference seam
    def weight_sets(self) -> Dict[str, dict]:
        """Every set of weights the trainer keeps, by name; each loads into build_network_architecture's network."""
        sets = {"student": unwrap(self.network).state_dict()}
        if self.teacher is not None:
            sets["teacher"] = self.teacher.state_dict()
        return sets

    def inference_choices(self) -> Dict[str, InferenceChoice]:
        """The named inference choices; `inference_weights` picks the one that validates and predicts."""
        choices = {"student": InferenceChoice("student", description="the trained network")}
        if self.teacher is not None:
            choices["teacher"] = InferenceChoice("teacher", description="the EMA teacher")
        return choices

    def inference_state(self) -> dict:
        """The weights of the inference choice (what `network_weights` holds), tensors shared, not copied."""
        return compose_weights(self.weight_sets(), self.inference_choices()[self.inference_weights])

    @contextmanager
    def inference_network(self):
        """Run the block with the inference choice's weights in self.network (the student's are put back)."""
        choice = self.inference_choices()[self.inference_weights]
        if choice.weights == "student" and choice.output_mix is None:
            yield
            return
        student_state = {k: v.clone() for k, v in unwrap(self.network).state_dict().items()}
        unwrap(self.network).load_state_dict(self.inference_state())
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
    def checkpoint_extras(self) -> dict:
        """What the SSL core adds to nnU-Net's checkpoint; subclasses add theirs (super() first). `network_weights`
        (the only entry nnUNetv2_predict reads) is replaced by the inference choice."""
        weights, choices = self.weight_sets(), self.inference_choices()
        return {"network_weights": compose_weights(weights, choices[self.inference_weights]),
                "ssl_weights": weights, "inference_choices": choices_entry(choices),
                "inference_weights": self.inference_weights,
                "optimizer_states": {name: o.state_dict() for name, o in self.optimizers.items()},
                "phase": self.current_phase}

    def load_checkpoint_extras(self, checkpoint: dict) -> None:
        unwrap(self.network).load_state_dict(checkpoint["ssl_weights"]["student"])
        if self.teacher is not None:
            self.teacher.load_state_dict(checkpoint["ssl_weights"]["teacher"])
        for name, state in checkpoint["optimizer_states"].items():
            self.optimizers[name].load_state_dict(state)
        self.current_phase = checkpoint["phase"]
        for key in self.ssl_log_keys:
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint entries plus every class's extras, written once (temporary file, then rename)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": None,  # filled by checkpoint_extras
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            **self.checkpoint_extras(),
        }
        write_checkpoint(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's entries (as nnUNetTrainer.load_checkpoint restores them: its own method cannot take a dict in
        nnU-Net 2.8.1) and every class's extras. The network gets the student weights, not `network_weights`
        (the inference choice)."""
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        if "ssl_weights" not in checkpoint:
            name = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "checkpoint"
            raise RuntimeError(f"{name}: not written by a nnunet_ssl trainer of this version (no 'ssl_weights')")
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.load_checkpoint_extras(checkpoint)


def is_semi_supervised(trainer_name: str) -> bool:
    """Whether the trainer nnU-Net's lookup finds under this name is one of this core's (so it needs an unlabeled
    pool, which datasets without one, e.g. self-training's round datasets or the benchmark's upper bound, lack)."""
    from nnunet_ssl.utilities import inputs
    return issubclass(inputs.trainer_class(trainer_name), nnUNetTrainerSSL)
