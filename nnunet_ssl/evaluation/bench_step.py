"""`nnunet_ssl bench-step`: time training iterations of several trainers in one run, and the compute floor.

For each trainer: build it exactly as nnUNetv2_train does, start its data loaders, warm up, then time
`train_step(next(dataloader_train))` (data loading included, as in training) in interleaved blocks so drift
of the machine hits all trainers alike. Each trainer's compute floor is measured from what it declares
(`nnUNetTrainerSSL.step_cost`: student passes per optimized network, teacher passes including MC-dropout
passes) with random tensors, relative to nnUNetTrainer's forward+backward on the labeled batch.
"""
import argparse
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


def bench(dataset: str, configuration: str, trainers: List[str], fold="0", iterations: int = 20,
          warmup: int = 3, blocks: int = 2, device: str = "cpu") -> Dict[str, dict]:
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ssl.utilities.paths import ensure_ext_trainer_env

    ensure_ext_trainer_env()
    fold = fold if fold == "all" else int(fold)
    built = {}
    for name in trainers:
        t = get_trainer_from_args(dataset, configuration, fold, name, "nnUNetPlans", device=torch.device(device))
        t.on_train_start()
        t.network.train()
        for _ in range(warmup):
            t.train_step(next(t.dataloader_train))
        built[name] = t
    step_times = {name: [] for name in trainers}
    per_block = max(1, iterations // blocks)
    for _ in range(blocks):
        for name, t in built.items():
            step_times[name] += _timed(lambda: t.train_step(next(t.dataloader_train)), per_block)
    results = {}
    for name, t in built.items():
        results[name] = {"s_per_iter": float(np.median(step_times[name])), **compute_floor(t)}
        t.on_train_end()
    return results


def format_results(results: Dict[str, dict], reference: str) -> str:
    ref = results[reference]["s_per_iter"]
    floor_ref = results[reference]["supervised_fwd_bwd"]
    lines = ["| trainer | s/iter (median) | ratio to " + reference + " | compute floor ratio |", "|---|---|---|---|"]
    for name, r in results.items():
        floor = 1.0 if name == reference else r["teacher_student_floor"] / floor_ref
        lines.append(f"| {name} | {r['s_per_iter']:.3f} | {r['s_per_iter'] / ref:.2f} | {floor:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="nnunet_ssl bench-step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", required=True)
    p.add_argument("-c", required=True)
    p.add_argument("-tr", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerMeanTeacher"])
    p.add_argument("-f", default="0")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    results = bench(a.d, a.c, a.tr, a.f, a.iters, blocks=a.blocks, device=a.device)
    print(format_results(results, a.tr[0]))
    print("compute floor ratio: the floor each trainer declares (step_cost: student fwd+bwd passes per trained "
          "network, no-grad teacher passes) over nnUNetTrainer's fwd+bwd, random tensors")
