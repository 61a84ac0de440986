"""`nnunet_ssl bench-step`: time training iterations of several trainers in one run, and the compute floor.

For each trainer: build it exactly as nnUNetv2_train does, start its data loaders, enter the phase its step_cost
describes (enter_timed_phase: MIRA-U's semi-supervised phase, not its pretraining phase), warm up, then time
`train_step(next(dataloader_train))` (data loading included, as in training) in interleaved blocks so drift
of the machine hits all trainers alike. Each trainer's compute floor is measured from what it declares
(`nnUNetTrainerSSL.step_cost`: student passes per optimized network, teacher passes including MC-dropout
passes) with random tensors, relative to nnUNetTrainer's forward+backward on the labeled batch.

With --peak-memory, each trainer also runs a few steps in a fresh process of its own: the peak memory of its
training steps above what the process held before the first one (the network, optimizer, data loaders): on CUDA
torch's peak allocation, on CPU the peak resident set (Linux: VmHWM, reset before the steps via
/proc/self/clear_refs). One process per trainer, because a process's peak covers everything it ever ran.

Nothing is written into $nnUNet_results: the trainers' plans, logs and debug files go to a temporary folder
that is deleted afterwards, and no checkpoint is saved (a trained model of the same trainer stays as it is).
"""
import argparse
import gc
import json
import os
import subprocess
import sys
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
    teacher = getattr(trainer, "teacher", None) or trainer.network  # none: the trained network(s), a pair at once

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


def enter_timed_phase(trainer) -> str:
    """Move a started trainer to the phase its step_cost describes and return that phase's name: the first phase
    that is not masked-image-modelling pretraining (MIRA-U's semi-supervised phase, whose step costs several times
    a pretraining step), entered as a training enters it. A trainer without phases, or with pretraining only
    (nnUNetTrainerMIM), stays where it is."""
    from nnunet_ssl.core.pretraining import MIM_PHASE

    phases = trainer.phases() if hasattr(trainer, "phases") else []
    timed = next((k for k, phase in enumerate(phases) if phase.name != MIM_PHASE), 0)
    if timed != getattr(trainer, "current_phase", 0):
        trainer.current_epoch = trainer.phase_starts[timed]
        trainer.on_epoch_start()  # the phase start: what a training does at this epoch
    return phases[timed].name if phases else "training"


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
    built, phases = {}, {}
    with tempfile.TemporaryDirectory(prefix="nnunet_ssl_bench_step_") as results:
        try:
            for name in trainers:
                t = built[name] = _build_in(results, dataset, configuration, fold, name, plans, device)
                t.on_train_start()
                phases[name] = enter_timed_phase(t)
                t.network.train()
                for _ in range(warmup):
                    t.train_step(next(t.dataloader_train))
            step_times = {name: [] for name in trainers}
            per_block = max(1, iterations // blocks)
            for _ in range(blocks):
                for name, t in built.items():
                    step_times[name] += _timed(lambda: t.train_step(next(t.dataloader_train)), per_block)
            return {name: {"s_per_iter": float(np.median(step_times[name])), "phase": phases[name],
                           **compute_floor(t, floor_repeats)} for name, t in built.items()}
        finally:
            for t in built.values():
                _stop_data_loaders(t)


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def measure_step_memory(dataset: str, configuration: str, name: str, fold="0", steps: int = 3,
                        device: str = "cpu", plans: str = "nnUNetPlans") -> int:
    """Bytes: the peak memory of `steps` training steps above what this process held before the first (see the
    module docstring). Meant for a fresh process (step_memory)."""
    from nnunet_ssl.utilities.inputs import dataset_name, trainer_class

    trainer_class(name)
    fold = fold if fold == "all" else int(fold)
    with tempfile.TemporaryDirectory(prefix="nnunet_ssl_bench_memory_") as results:
        t = _build_in(results, dataset_name(dataset), configuration, fold, name, plans, device)
        try:
            t.on_train_start()
            enter_timed_phase(t)
            t.network.train()
            batches = [next(t.dataloader_train) for _ in range(steps)]  # loaded before: the steps' own memory
            gc.collect()
            if t.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            else:
                with open("/proc/self/clear_refs", "w") as clear:
                    clear.write("5")  # resets VmHWM to the current resident set
                before = _resident_kib("VmRSS") * 1024
            for batch in batches:
                t.train_step(batch)
            if t.device.type == "cuda":
                torch.cuda.synchronize()
                return int(torch.cuda.max_memory_allocated() - before)
            return int(_resident_kib("VmHWM") * 1024 - before)
        finally:
            _stop_data_loaders(t)


def step_memory(dataset: str, configuration: str, name: str, fold="0", steps: int = 3, device: str = "cpu",
                plans: str = "nnUNetPlans") -> int:
    """measure_step_memory in a fresh Python process (its peak is then this trainer's alone)."""
    code = ("import json, sys; from nnunet_ssl.evaluation.bench_step import measure_step_memory; "
            "print('STEP_MEMORY', json.dumps(measure_step_memory(*json.loads(sys.argv[1]))))")
    args = json.dumps([dataset, configuration, name, fold, steps, device, plans])
    run = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("STEP_MEMORY ")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"the memory probe of {name} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return int(json.loads(lines[-1].split(" ", 1)[1]))


def format_results(results: Dict[str, dict], reference: str) -> str:
    """The markdown table: timings and floors (when timed), step memory and its ratio (when measured)."""
    timed = all("s_per_iter" in r for r in results.values())
    memory = all("step_memory" in r for r in results.values())
    header = ["trainer"]
    if timed:
        header += ["phase timed", "s/iter (median)", f"ratio to {reference}", "compute floor ratio"]
    if memory:
        header += ["step memory (GiB)", "memory ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ref = results[reference]
    for name, r in results.items():
        cells = [name]
        if timed:
            floor = 1.0 if name == reference else r["teacher_student_floor"] / ref["supervised_fwd_bwd"]
            cells += [r.get("phase", "training"), f"{r['s_per_iter']:.3f}",
                      f"{r['s_per_iter'] / ref['s_per_iter']:.2f}", f"{floor:.2f}"]
        if memory:
            ratio = r["step_memory"] / ref["step_memory"] if ref["step_memory"] else float("nan")
            cells += [f"{r['step_memory'] / 2 ** 30:.2f}", f"{ratio:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
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
    p.add_argument("--iters", type=int, default=20,
                   help="timed iterations per trainer (default: 20); 0 with --peak-memory: memory only (the timing "
                        "keeps every trainer alive in one process, too much for a 3D plan on a CPU machine)")
    p.add_argument("--blocks", type=int, default=2,
                   help="the timed iterations run in this many interleaved blocks per trainer (default: 2)")
    p.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda if available; mps for timings only)")
    p.add_argument("--peak-memory", action="store_true",
                   help="also each trainer's peak step memory, from 3 steps in a fresh process per trainer")
    return p


def main(argv=None):
    p = parser()
    a = p.parse_args(argv)
    if a.iters < 0 or (a.iters == 0 and not a.peak_memory):
        p.error("--iters must be positive, or 0 together with --peak-memory (memory only)")
    results = (bench(a.d, a.c, a.tr, a.f, a.iters, blocks=a.blocks, device=a.device, plans=a.p) if a.iters
               else {name: {} for name in a.tr})
    if a.peak_memory:
        for name in a.tr:
            results[name]["step_memory"] = step_memory(a.d, a.c, name, a.f, device=a.device, plans=a.p)
    print(format_results(results, a.tr[0]))
    notes = (["compute floor ratio: the floor each trainer declares (step_cost: student fwd+bwd passes per trained "
              "network, no-grad teacher passes) over nnUNetTrainer's fwd+bwd, random tensors"] if a.iters else []) + \
        (["step memory: peak above the memory held before the first step, one process per trainer"]
         if a.peak_memory else [])
    print("; ".join(notes))
