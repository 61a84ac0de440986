"""Shared fixtures: tiny synthetic datasets planned and preprocessed with the real nnU-Net CLIs."""
import os
import subprocess
import sys
from contextlib import contextmanager, nullcontext

import pytest
import torch

from nnunet_ssl.utilities.paths import trainers_folder
from nnunet_ssl.data.synthetic import write_synthetic_dataset

# a test-only trainer that exercises the core's seams (a dual-head network)
SEAM_TRAINERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seam_trainers")
CPU_ENV = {"nnUNet_compile": "f", "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "0",
           "nnUNet_ssl_epochs": "2", "nnUNet_ssl_iters": "3", "nnUNet_ssl_val_iters": "1",
           "OMP_NUM_THREADS": "2"}


@contextmanager
def environment(**variables):
    """os.environ with these variables set, restored afterwards."""
    old = {k: os.environ.get(k) for k in variables}
    os.environ.update({k: str(v) for k, v in variables.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"),
           "nnUNet_extTrainer": os.pathsep.join([trainers_folder(), SEAM_TRAINERS]), **CPU_ENV}
    with environment(**env):
        yield env


def run_cli(*cmd, env=None, check=True):
    """Run a real CLI; on failure show its output."""
    full_env = {**os.environ, **(env or {})}
    # explicit encoding: a library may have switched the process locale to "C" (ascii) by now
    r = subprocess.run([str(c) for c in cmd], capture_output=True, encoding="utf-8", errors="replace",
                       env=full_env)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                             f"{r.stderr[-4000:]}")
    return r


def nnunet_ssl_cli(*args, **kw):
    return run_cli(sys.executable, "-m", "nnunet_ssl", *args, **kw)


def assert_blended_with_labeled(view: torch.Tensor) -> None:
    """`view` is a labeled-mix-up view of an all-zeros unlabeled batch with an all-ones labeled one: each sample is
    constant, its value the labeled image's share 1 - lam, lam >= 0.5, and some sample is blended at all."""
    share = view.flatten(1)
    assert torch.allclose(share, share[:, :1].expand_as(share))
    assert (share[:, 0] >= 0).all() and (share[:, 0] <= 0.5).all() and share[:, 0].max() > 0


def refused(capsys, argv) -> str:
    """`nnunet_ssl ARGV` in process must refuse (exit 2, as a user error ends); returns what it wrote to stderr."""
    from nnunet_ssl.commands.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


def plan_and_preprocess(dataset_id, configuration):
    """What `nnUNetv2_plan_and_preprocess -d ID -c CONF --verify_dataset_integrity` does, in process, with one
    change for speed: the fingerprint samples 1e5 foreground voxels for its intensity statistics instead of 1e8
    (30 s per tiny dataset). Those statistics only feed CT normalisation; the synthetic datasets use z-scoring.
    The real command runs in the demo test (`nnunet_ssl demo`)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset, plan_experiments,
                                                                      preprocess)

    class FewSamplesFingerprintExtractor(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = 1e5

    extract_fingerprint_dataset(dataset_id, FewSamplesFingerprintExtractor, 1, True, True, False)
    # nnU-Net 2.8's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for the tests' 0
    n_proc_da = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        plan_experiments([dataset_id])
    finally:
        if n_proc_da is None:
            os.environ.pop("nnUNet_n_proc_DA")
        else:
            os.environ["nnUNet_n_proc_DA"] = n_proc_da
    preprocess([dataset_id], configurations=(configuration,), num_processes=(1,), verbose=False)


def prepare(nnunet_env, dataset_id, dim, configuration, pool=True, **kw):
    from nnunet_ssl.data.pool import preprocess_unlabeled
    folder = write_synthetic_dataset(nnunet_env["nnUNet_raw"], dataset_id, f"T{dim}D", dim=dim, **kw)
    plan_and_preprocess(dataset_id, configuration)
    if pool:
        preprocess_unlabeled(dataset_id, [configuration], num_processes=1, verbose=False)
    return folder


def train_in_process(dataset, configuration, fold, trainer, continue_training=False, validate=True, **env):
    """What `nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -device cpu [--c]` runs once it has parsed its
    arguments (nnU-Net's run_training: trainer lookup, checkpoint, training, final validation), in this process.
    For trainers whose family's test runs the stock CLIs as commands: a command's start-up (importing nnU-Net and
    every trainer module of its tree) is paid once per family, not once per trainer. `validate=False` skips
    nnU-Net's final validation (its export pool starts processes), for a training that only makes a checkpoint
    to continue from."""
    from unittest import mock

    from nnunetv2.run.run_training import run_training
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    skip_validation = mock.patch.object(nnUNetTrainer, "perform_actual_validation", lambda self, *args: None)
    with environment(**env), (nullcontext() if validate else skip_validation):
        run_training(dataset, configuration, fold, trainer, continue_training=continue_training,
                     device=torch.device("cpu"))


def predict_test_set_2d(dataset_2d, out, trainer, fold="0", in_process=False):
    """Stock nnUNetv2_predict of Dataset801's two 48x48 test PNGs (`in_process`: what the command runs with
    `-npp 0 -nps 0` once it has parsed its arguments); each output must be a label map of the image's size.
    Returns the prediction files."""
    import glob

    import numpy as np
    from PIL import Image

    images = os.path.join(dataset_2d, "imagesTs")
    if in_process:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        predictor = nnUNetPredictor(tile_step_size=0.5, perform_everything_on_device=False,
                                    device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(get_output_folder("801", trainer, "nnUNetPlans", "2d"),
                                                       (fold if fold == "all" else int(fold),), "checkpoint_final.pth")
        os.makedirs(out, exist_ok=True)  # as nnUNetv2_predict does
        predictor.predict_from_files_sequential(images, str(out))
    else:
        run_cli("nnUNetv2_predict", "-i", images, "-o", out, "-d", "801", "-c", "2d", "-f", fold, "-tr", trainer,
                "-device", "cpu", "-npp", "0", "-nps", "0")
    predictions = sorted(glob.glob(os.path.join(str(out), "*.png")))
    assert len(predictions) == 2
    for p in predictions:
        seg = np.array(Image.open(p))
        assert seg.shape == (48, 48) and set(np.unique(seg)) <= {0, 1, 2}
    return predictions


@pytest.fixture(scope="session")
def dataset_2d(nnunet_env):
    """4 labeled (fewer than nnU-Net's 5 folds: leave-one-out split), 6 unlabeled, 2 test RGB PNGs, 48x48."""
    return prepare(nnunet_env, 801, 2, "2d", n_labeled=4, n_unlabeled=6, n_test=2, size=48)


@pytest.fixture(scope="session")
def three_labeled_no_pool(nnunet_env):
    """3 labeled, 3 unlabeled, 1 test RGB PNG, 40x40; planned, unlabeled pool not yet preprocessed."""
    return prepare(nnunet_env, 803, 2, "2d", pool=False, n_labeled=3, n_unlabeled=3, n_test=1, size=40)


@pytest.fixture(scope="session")
def contract_3d(nnunet_env):
    """3D NIfTI, 4 labeled, 3 unlabeled, 1 test case, 20^3, pool preprocessed."""
    return prepare(nnunet_env, 812, 3, "3d_fullres", n_labeled=4, n_unlabeled=3, n_test=1, size=20)
