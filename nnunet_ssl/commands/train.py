"""`nnunet_ssl train`: nnUNetv2_train with an explicit training length, for any trainer.

nnU-Net fixes the length in the trainer (1000 epochs x 250 iterations); comparing a baseline and a
semi-supervised trainer under one short budget needs the same override for both, so this runs nnU-Net's own
entry points (get_trainer_from_args, maybe_load_checkpoint, run_training, perform_actual_validation) with
num_epochs / num_iterations_per_epoch set before the trainer is initialised (the LR schedule uses them).
"""
import argparse
import os
import time

import numpy as np
import torch

from nnunet_ssl.utilities.atomic import write_json


def time_training_phases(trainer) -> list:
    """Record, per epoch, the seconds from on_train_epoch_start to on_train_epoch_end: the training
    iterations with their data loading, without nnU-Net's per-epoch validation."""
    seconds, start = [], {}
    on_start, on_end = trainer.on_train_epoch_start, trainer.on_train_epoch_end

    def timed_start():
        start["t"] = time.perf_counter()
        on_start()

    def timed_end(outputs):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start["t"])
        on_end(outputs)

    trainer.on_train_epoch_start, trainer.on_train_epoch_end = timed_start, timed_end
    return seconds


def train(dataset: str, configuration: str, fold, trainer_name: str, epochs: int, iterations: int,
          val_iterations: int = None, plans: str = "nnUNetPlans", device: str = "cpu", continue_training=False,
          validate: bool = True, stats_json: str = None, save_every: int = None, overwrite: bool = False,
          pool_labels: str = None, pool_audit_cases: int = None) -> float:
    """Train and validate; returns the wall time of training in seconds. `stats_json` receives the wall time,
    seconds per iteration (median over the timed epochs, the first one left out as warm-up when there are
    more) and the peak GPU memory. `save_every`: write checkpoint_latest.pth every this many epochs (nnU-Net:
    50). A fold folder that holds a checkpoint is continued (`continue_training`) or, only with `overwrite`,
    trained again from scratch; otherwise this refuses, so that no trained model is replaced by accident.
    `pool_labels`: a folder with labels of unlabeled cases, for the pool audit after every epoch
    (nnunet_ssl.evaluation.pool_audit; its last summary goes into `stats_json`)."""
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_ssl.evaluation.pool_audit import PoolAuditError, install_pool_audit
    from nnunet_ssl.utilities.inputs import UserError, dataset_name, nnunet_folder, trainer_class

    nnunet_folder("nnUNet_results")
    if pool_labels and not os.path.isdir(pool_labels):  # before the trainer is built: fail in a second
        raise PoolAuditError(f"--pool-labels {pool_labels}: not a folder")
    if pool_audit_cases is not None and pool_audit_cases < 1:
        raise PoolAuditError(f"--pool-audit-cases {pool_audit_cases}: must be at least 1")
    dataset = dataset_name(dataset)
    trainer_class(trainer_name)
    fold_folder = get_output_folder(dataset, trainer_name, plans, configuration, fold)
    existing = [f for f in ("checkpoint_final.pth", "checkpoint_latest.pth")
                if os.path.isfile(os.path.join(fold_folder, f))]
    if existing and not (continue_training or overwrite):
        raise UserError(f"{fold_folder} holds {existing[0]}: continue it with --c, or train it again from scratch "
                        f"(replacing it) with --overwrite")
    if fold != "all":
        fold = int(fold)
    trainer = get_trainer_from_args(dataset, configuration, fold, trainer_name, plans, device=torch.device(device))
    if save_every:
        trainer.save_every = save_every
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations or max(1, iterations // 5)
    trainer.print_to_log_file(f"Training length set by nnunet_ssl train: {epochs} epochs x {iterations} iterations")
    maybe_load_checkpoint(trainer, continue_training, False, None)
    epoch_seconds = time_training_phases(trainer)
    audit = install_pool_audit(trainer, pool_labels, pool_audit_cases) if pool_labels else None
    start = time.time()
    trainer.run_training()
    seconds = time.time() - start
    if stats_json:
        timed = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds
        stats = {"trainer": trainer_name, "epochs": epochs, "iterations_per_epoch": iterations,
                 "train_seconds": seconds, "epochs_timed": len(epoch_seconds),
                 "s_per_iter": float(np.median(timed)) / iterations if timed else None,
                 "device": str(trainer.device),
                 "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if trainer.device.type == "cuda" else None}
        if audit is not None:
            stats["pool_audit"] = audit["last"]
        write_json(stats_json, stats)
    if validate:
        trainer.perform_actual_validation(False)
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(prog="nnunet_ssl train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset name or id")
    p.add_argument("configuration", help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("fold", help="fold (0, 1, ... or all)")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="trainer class (default: nnUNetTrainer)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("--epochs", type=int, required=True, help="epochs")
    p.add_argument("--iters", type=int, required=True, help="iterations per epoch")
    p.add_argument("--val-iters", type=int, default=None, help="validation iterations per epoch (default: iters // 5)")
    p.add_argument("-device", "--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cpu or mps (default: cuda if available)")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="train from scratch even if the fold folder holds a "
                                                            "checkpoint (it is replaced)")
    p.add_argument("--save-every", type=int, default=None, help="write checkpoint_latest.pth every N epochs "
                                                                "(nnU-Net: 50), so that --c after a crash loses less")
    p.add_argument("--no-val", action="store_true", help="skip the final validation")
    p.add_argument("--stats-json", default=None, help="write wall time, s/iteration and peak GPU memory here")
    p.add_argument("--pool-labels", default=None, metavar="FOLDER",
                   help="labels (<case><file_ending>) of unlabeled cases: after every epoch, the Dice and predicted / "
                        "true volume of the inference weights on those pool cases (pool_audit.json and .png in the "
                        "fold folder, a line in the log); never used for training")
    p.add_argument("--pool-audit-cases", type=int, default=None, metavar="N",
                   help="audit only the first N labelled pool cases (by id), to bound its time")
    a = p.parse_args(argv)
    seconds = train(a.dataset, a.configuration, a.fold, a.trainer, a.epochs, a.iters, a.val_iters, a.plans,
                    a.device, a.c, not a.no_val, a.stats_json, a.save_every, a.overwrite, a.pool_labels,
                    a.pool_audit_cases)
    print(f"Training took {seconds:.1f} s")
