"""bench-step's compute floor follows what each trainer declares (step_cost, optimized_modules, teacher)."""
import math

import pytest
import torch

from nnunet_ssl.architectures.common import unwrap
from nnunet_ssl.evaluation.bench_step import compute_floor


def _build(name):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("801", "2d", "all", name, "nnUNetPlans", device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def _count_forwards(module, counts, key):
    module.register_forward_hook(lambda m, i, o: counts.setdefault(key, []).append(i[0].shape[0]))


def test_floor_counts_the_declared_passes(dataset_2d, nnunet_env):
    counts = {}
    mean_teacher = _build("nnUNetTrainerMeanTeacher")  # 2 student passes, 1 teacher pass
    _count_forwards(unwrap(mean_teacher.network), counts, "student")
    _count_forwards(mean_teacher.teacher.module, counts, "teacher")
    floor = compute_floor(mean_teacher, repeats=1)  # warm-up + 1 timed run of each
    b = mean_teacher.batch_size
    assert counts == {"student": [b] * 6, "teacher": [b] * 2} and floor["teacher_student_floor"] > 0

    counts = {}
    two_nets = _build("nnUNetTrainerDualNet_Paper")  # 2 passes through each of two networks, no teacher
    for name, member in unwrap(two_nets.network).members.items():
        _count_forwards(member, counts, name)
    compute_floor(two_nets, repeats=1)
    assert counts == {"a": [b] * 6, "b": [b] * 4}  # a also gives the supervised reference


def test_step_memory_in_a_fresh_process_and_its_columns(dataset_2d, nnunet_env):
    from nnunet_ssl.evaluation.bench_step import format_results, step_memory
    memory = step_memory("801", "2d", "nnUNetTrainer", fold="all", steps=2)
    assert 0 < memory < 8 * 2 ** 30  # a 48 x 48 plan's step: positive, far below the machine
    results = {name: {"s_per_iter": 1.0, "supervised_fwd_bwd": 1.0, "teacher_student_floor": 2.0,
                      "step_memory": m} for name, m in (("nnUNetTrainer", 2 ** 30), ("nnUNetTrainerDualNet", 2 ** 31))}
    table = format_results(results, "nnUNetTrainer")
    assert "step memory (GiB) | memory ratio |" in table and "| 2.00 | 2.00 |" in table


def test_memory_only_skips_the_timing(monkeypatch, capsys):
    """--iters 0 --peak-memory: no trainer is timed (timing keeps them all alive in one process), only the fresh-
    process probes run; --iters 0 alone is refused."""
    from nnunet_ssl.evaluation import bench_step

    def no_timing(*args, **kwargs):
        raise AssertionError("timed although --iters 0")

    monkeypatch.setattr(bench_step, "bench", no_timing)
    monkeypatch.setattr(bench_step, "step_memory", lambda d, c, name, f, **kw: {"A": 2 ** 30, "B": 3 * 2 ** 30}[name])
    bench_step.main(["-d", "801", "-c", "3d_fullres", "-tr", "A", "B", "--iters", "0", "--peak-memory"])
    out = capsys.readouterr().out
    assert "| trainer | step memory (GiB) | memory ratio |" in out and "| B | 3.00 | 3.00 |" in out
    assert "s/iter" not in out and "compute floor" not in out
    with pytest.raises(SystemExit):
        bench_step.main(["-d", "801", "-c", "2d", "--iters", "0"])
    assert "0 together with --peak-memory" in capsys.readouterr().err


def test_timed_phase_is_the_one_step_cost_describes(dataset_2d, nnunet_env):
    """MIRA-U is timed in its semi-supervised phase (entered as a training enters it), not in the pretraining
    phase its training starts with; a pretraining-only trainer stays in its one phase."""
    from nnunet_ssl.evaluation.bench_step import _stop_data_loaders, enter_timed_phase

    for name, phase, key in (("nnUNetTrainerMIRAU", "ssl", "kept_fraction"),
                             ("nnUNetTrainerMIM", "mim", "reconstruction_loss")):
        trainer = _build(name)
        trainer.on_train_start()
        try:
            assert trainer.current_phase == 0 and enter_timed_phase(trainer) == phase
            assert trainer.phases()[trainer.current_phase].name == phase
            # the step is that phase's: its own term is computed (a pretraining step logs the others as NaN)
            assert math.isfinite(trainer.train_step(next(trainer.dataloader_train))[key])
        finally:
            _stop_data_loaders(trainer)
