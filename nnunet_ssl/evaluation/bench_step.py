"""`nnunet_ssl bench-step`: time training iterations of several trainers in one run, and the compute floor.

For each trainer: build it exactly as nnUNetv2_train does, start its data loaders, warm up, then time
`train_step(next(dataloader_train))` (data loading included, as in training) in interleaved blocks so drift
of the machine hits all trainers alike. Each trainer's compute floor is measured from what it declares
(`nnUNetTrainerSSL.step_cost`: student passes per optimized network, teacher passes including MC-dropout
passes) with random tensors, relative to nnUNetTrainer's forward+backward on the labeled batch.

Nothing is written into $nnUNet_results: the trainers' plans, logs and debug files go to a temporary folder
that is deleted afterwards, and no checkpoint is saved (a trained model of the same trainer stays as it is).
"""
import argparse
import os
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch


def _timed(fn, repeats: int) -> List[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _scalar(output) -> torch.Tensor:
    """A scalar that depends on every output tensor (deep-supervision lists, a multi-output network's dict)."""
    if isinstance(output, dict):
        return sum(_scalar(o) for o in output.values())
    if isinstance(output, (list, tuple)):
        return sum(_scalar(o) for o in output)
    return output.float().mean()


def _all_outputs(module, x):
    from nnunet_ssl.architectures.multi_output import MultiOutputNetwork
    from nnunet_ssl.architectures.common import unwrap
    return module(x, all_outputs=True) if isinstance(unwrap(module), MultiOutputNetwork) else module(x)


def compute_floor(trainer, repeats: int = 10) -> Dict[str, float]:
    """Seconds for one supervised fwd+bwd (batch B) and for the trainer's floor as it declares it (`step_cost`):
    `student_passes` fwd+bwd of batch B through each of its optimized networks (two for a dual-network method)
    and `teacher_passes` no-grad teacher forwards, batched into one forward of teacher_passes x B samples as
    MC-dropout teachers run them. nnUNetTrainer (no step_cost): the floor is its own fwd+bwd."""
    b = trainer.batch_size
    x = torch.randn(b, trainer.num_input_channels, *trainer.configuration_manager.patch_size, device=trainer.device)
    cost = getattr(trainer, "step_cost", None)
    networks = list(trainer.optimized_modules().values()) if cost is not None else [trainer.network]
    teacher = getattr(trainer, "teacher", None) or networks[0]

    def fwd_bwd(network):
        _scalar(_all_outputs(network, x)).backward()

    def supervised():
        fwd_bwd(networks[0])

    def floor():
        if cost is None:
            return supervised()
        if cost.teacher_passes:
            with torch.no_grad():
                _all_outputs(teacher, x.repeat(cost.teacher_passes, *([1] * (x.dim() - 1))))
        for network in networks:
            for _ in range(cost.student_passes):  # separate backward per pass, as the trainers do
                fwd_bwd(network)

    supervised(), floor()  # warm-up
    return {"supervised_fwd_bwd": float(np.median(_timed(supervised, repeats))),
            "teacher_student_floor": float(np.median(_timed(floor, repeats)))}


def _build_in(results: str, dataset: str, configuration: str, fold, name: str, plans: str, device: str):
    """The trainer nnUNetv2_train builds, with every folder it writes to (output_folder_base, output_folder,
    log_file, its logger's folder: all set, and fold_<f>/ created, in __init__) under `results` instead of
    $nnUNet_results. A cascade's previous-stage segmentations are still read from $nnUNet_results."""
    from nnunetv2.run.run_training import get_trainer_from_args

    user_results = os.environ.get("nnUNet_results")
    os.environ["nnUNet_results"] = results  # nnunetv2.paths reads it when the trainer is built
    try:
        t = get_trainer_from_args(dataset, configuration, fold, name, plans, device=torch.device(device))
    finally:
        if user_results is None:
            del os.environ["nnUNet_results"]
        else:
            os.environ["nnUNet_results"] = user_results
    if t.folder_with_segs_from_previous_stage is not None and user_results is not None:
        t.folder_with_segs_from_previous_stage = os.path.join(
            user_results, os.path.relpath(t.folder_with_segs_from_previous_stage, results))
    return t


def _stop_data_loaders(trainer) -> None:
    """What nnUNetTrainer.on_train_end does to its data loaders (and nnUNetTrainerSSL's unlabeled loader), without
    saving checkpoint_final.pth: every multi-process augmenter the trainer holds."""
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    for loader in list(vars(trainer).values()):
        if isinstance(loader, (MultiThreadedAugmenter, NonDetMultiThreadedAugmenter)):
            loader._finish()


def bench(dataset: str, configuration: str, trainers: List[str], fold="0", iterations: int = 20,
          warmup: int = 3, blocks: int = 2, device: str = "cpu", plans: str = "nnUNetPlans",
          floor_repeats: int = 10) -> Dict[str, dict]:
    """Seconds per training iteration and compute floors; writes nothing into $nnUNet_results (module docstring)."""
    from nnunet_ssl.utilities.inputs import dataset_name, trainer_class

    dataset = dataset_name(dataset)
    for name in trainers:
        trainer_class(name)  # also adds the plugin's trainers to nnUNet_extTrainer
    fold = fold if fold == "all" else int(fold)
    built = {}
    with tempfile.TemporaryDirectory(prefix="nnunet_ssl_bench_step_") as results:
        try:
            for name in trainers:
                t = built[name] = _build_in(results, dataset, configuration, fold, name, plans, device)
                t.on_train_start()
                t.network.train()
                for _ in range(warmup):
                    t.train_step(next(t.dataloader_train))
            step_times = {name: [] for name in trainers}
            per_block = max(1, iterations // blocks)
            for _ in range(blocks):
                for name, t in built.items():
                    step_times[name] += _timed(lambda: t.train_step(next(t.dataloader_train)), per_block)
            return {name: {"s_per_iter": float(np.median(step_times[name])), **compute_floor(t, floor_repeats)}
                    for name, t in built.items()}
        finally:
            for t in built.values():
                _stop_data_loaders(t)


def format_results(results: Dict[str, dict], reference: str) -> str:
    ref = results[reference]["s_per_iter"]
    floor_ref = results[reference]["supervised_fwd_bwd"]
    lines = ["| trainer | s/iter (median) | ratio to " + reference + " | compute floor ratio |", "|---|---|---|---|"]
    for name, r in results.items():
        floor = 1.0 if name == reference else r["teacher_student_floor"] / floor_ref
        lines.append(f"| {name} | {r['s_per_iter']:.3f} | {r['s_per_iter'] / ref:.2f} | {floor:.2f} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_ssl bench-step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", required=True, help="dataset name or id (planned and preprocessed)")
    p.add_argument("-c", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerMeanTeacher"],
                   help="trainers; the first is the reference of the ratios (default: nnUNetTrainer "
                        "nnUNetTrainerMeanTeacher)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", default="0", help="fold whose training cases feed the data loaders (default: 0)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per trainer (default: 20)")
    p.add_argument("--blocks", type=int, default=2,
                   help="the timed iterations run in this many interleaved blocks per trainer (default: 2)")
    p.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cpu or mps (default: cuda if available)")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    results = bench(a.d, a.c, a.tr, a.f, a.iters, blocks=a.blocks, device=a.device, plans=a.p)
    print(format_results(results, a.tr[0]))
    print("compute floor ratio: the floor each trainer declares (step_cost: student fwd+bwd passes per trained "
          "network, no-grad teacher passes) over nnUNetTrainer's fwd+bwd, random tensors")
