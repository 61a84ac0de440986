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
