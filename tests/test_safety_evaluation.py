"""The evaluation commands never write into a folder they did not create (issue 18), leave nothing half-written
behind, and a killed benchmark resumes."""
import hashlib
import os
import tempfile

import pytest


def tree(root) -> dict:
    """Every folder and file under `root`, files with their md5."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            found[os.path.relpath(os.path.join(folder, d), root) + "/"] = None
        for f in files:
            with open(os.path.join(folder, f), "rb") as fh:
                found[os.path.relpath(os.path.join(folder, f), root)] = hashlib.md5(fh.read()).hexdigest()
    return found


# ---------------------------------------------------------------------- bench-step
def test_bench_step_leaves_a_trained_model_and_nnunet_results_untouched(dataset_2d, tmp_path, monkeypatch):
    from nnunet_ssl.evaluation.bench_step import bench

    results = tmp_path / "results"
    model = results / "Dataset801_T2D" / "nnUNetTrainer__nnUNetPlans__2d"
    (model / "fold_all").mkdir(parents=True)
    for name, content in (("fold_all/checkpoint_final.pth", b"trained weights"),
                          ("fold_all/checkpoint_latest.pth", b"latest"),
                          ("fold_all/training_log_2024_1_1_00_00_00.txt", b"the user's log"),
                          ("plans.json", b'{"the user": "plans"}'), ("dataset.json", b"{}")):
        (model / name).write_bytes(content)
    before = tree(results)
    monkeypatch.setenv("nnUNet_results", str(results))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    timed = bench("801", "2d", ["nnUNetTrainer"], "all", iterations=1, warmup=1, blocks=1)
    assert timed["nnUNetTrainer"]["s_per_iter"] > 0
    assert tree(results) == before
    assert not [d for d in os.listdir(temp) if "bench_step" in d]  # its temporary results folder is gone


# ---------------------------------------------------------------------- benchmark: planning, child environment
class _Stop(Exception):
    pass


def _first_benchmark_command(tmp_path, monkeypatch):
    """run_benchmark on a raw dataset that is not planned yet, stopped at the first command it runs (planning):
    (command, environment)."""
    from nnunet_ssl.data.synthetic import write_synthetic_dataset
    from nnunet_ssl.evaluation import benchmark

    for var in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{var}", str(tmp_path / var))
    write_synthetic_dataset(str(tmp_path / "raw"), 871, "Unplanned", n_labeled=2, n_unlabeled=1, n_test=1, size=16)
    commands = []

    def first_command(cmd, log, env):
        commands.append((cmd, env))
        raise _Stop

    monkeypatch.setattr(benchmark, "_run", first_command)
    with pytest.raises(_Stop):
        benchmark.run_benchmark("871", "2d", ["nnUNetTrainer"], 1, 2, out=str(tmp_path / "bench"))
    return commands[0]


def test_benchmark_plans_an_unplanned_dataset_with_an_id_nnunet_accepts(tmp_path, monkeypatch):
    import sys

    from nnunetv2.experiment_planning import plan_and_preprocess_entrypoints as entry

    cmd, _ = _first_benchmark_command(tmp_path, monkeypatch)
    assert cmd[0] == "nnUNetv2_plan_and_preprocess"
    # nnU-Net's own entry point parses the command (its -d takes integer ids); the work itself is not done
    called = {}
    monkeypatch.setattr(entry, "extract_fingerprints", lambda ids, *a, **k: called.setdefault("ids", ids))
    monkeypatch.setattr(entry, "plan_experiments", lambda *a, **k: "nnUNetPlans")
    monkeypatch.setattr(entry, "preprocess", lambda ids, plans, configurations, *a, **k:
                        called.setdefault("configurations", configurations))
    monkeypatch.setattr(sys, "argv", cmd)
    entry.plan_and_preprocess_entry()
    assert called == {"ids": [871], "configurations": ["2d"]}


@pytest.mark.parametrize("user", [None, "/user/trainers", os.pathsep.join(["/user/a", "/user/b"]), "plugin"])
def test_benchmark_adds_the_plugin_trainers_to_the_users_nnunet_exttrainer(user, tmp_path, monkeypatch):
    from nnunet_ssl.utilities.paths import trainers_folder

    user = trainers_folder() if user == "plugin" else user
    if user is None:
        monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    else:
        monkeypatch.setenv("nnUNet_extTrainer", user)
    _, env = _first_benchmark_command(tmp_path, monkeypatch)
    kept = [p for p in (user or "").split(os.pathsep) if p and p != trainers_folder()]
    assert env["nnUNet_extTrainer"].split(os.pathsep) == kept + [trainers_folder()]
    assert env["nnUNet_results"] == str(tmp_path / "bench" / "nnUNet_results")
