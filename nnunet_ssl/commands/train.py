"""`nnunet_ssl train`: nnUNetv2_train with an explicit training length, for any trainer.

nnU-Net fixes the length in the trainer (1000 epochs x 250 iterations); comparing a baseline and a
semi-supervised trainer under one short budget needs the same override for both, so this runs nnU-Net's own
entry points (get_trainer_from_args, maybe_load_checkpoint, run_training, perform_actual_validation) with
num_epochs / num_iterations_per_epoch set before the trainer is initialised (the LR schedule uses them).
"""
import argparse
import json
import os
import time

import numpy as np
import torch


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
          validate: bool = True, stats_json: str = None) -> float:
    """Train and validate; returns the wall time of training in seconds. `stats_json` receives the wall time,
    seconds per iteration (median over the timed epochs, the first one left out as warm-up when there are
    more) and the peak GPU memory."""
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from nnunet_ssl.utilities.paths import ensure_ext_trainer_env

    ensure_ext_trainer_env()
    if fold != "all":
        fold = int(fold)
    trainer = get_trainer_from_args(dataset, configuration, fold, trainer_name, plans, device=torch.device(device))
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations or max(1, iterations // 5)
    trainer.print_to_log_file(f"Training length set by nnunet_ssl train: {epochs} epochs x {iterations} iterations")
    maybe_load_checkpoint(trainer, continue_training, False, None)
    epoch_seconds = time_training_phases(trainer)
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
        with open(stats_json + ".tmp", "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(stats_json + ".tmp", stats_json)
    if validate:
        trainer.perform_actual_validation(False)
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(prog="nnunet_ssl train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("configuration")
    p.add_argument("fold")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--iters", type=int, required=True, help="iterations per epoch")
    p.add_argument("--val-iters", type=int, default=None)
    p.add_argument("-device", "--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-val", action="store_true", help="skip the final validation")
    p.add_argument("--stats-json", default=None, help="write wall time, s/iteration and peak GPU memory here")
    a = p.parse_args(argv)
    seconds = train(a.dataset, a.configuration, a.fold, a.trainer, a.epochs, a.iters, a.val_iters, a.plans,
                    a.device, a.c, not a.no_val, a.stats_json)
    print(f"Training took {seconds:.1f} s")
