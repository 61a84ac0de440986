"""The unlabeled pool: preprocessing with the labeled plans, bad input, atomic writes, stale pools."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import nnunet_ssl_cli, refused
from nnunet_ssl.data.pool import (POOL_MANIFEST, UnlabeledPoolError, check_pool, preprocess_unlabeled,
                                  preprocessed_pool_folder)


@pytest.fixture(scope="module")
def raw_2d(three_labeled_no_pool):
    return three_labeled_no_pool


def _pre_base(nnunet_env):
    return os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset803_T2D")


def _pool(nnunet_env):
    return preprocessed_pool_folder(_pre_base(nnunet_env), "nnUNetPlans_2d")


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _no_temp_left(nnunet_env):
    return not [d for d in os.listdir(_pre_base(nnunet_env)) if ".partial-" in d]


def test_pool_is_preprocessed_without_touching_labeled_dataset(raw_2d, nnunet_env, capsys):
    from nnunet_ssl.commands.cli import main

    base = _pre_base(nnunet_env)
    own_files = ["dataset_fingerprint.json", "nnUNetPlans.json", "dataset.json"]
    before = {f: _digest(os.path.join(base, f)) for f in own_files}
    labeled_before = sorted(os.listdir(os.path.join(base, "nnUNetPlans_2d")))
    pool = _pool(nnunet_env)
    shutil.rmtree(pool, ignore_errors=True)  # start from no pool, whatever ran before
    splits_file = os.path.join(base, "splits_final.json")
    if os.path.exists(splits_file):
        os.remove(splits_file)
    r = nnunet_ssl_cli("preprocess-unlabeled", "-d", "803", "-c", "2d", "-np", "2")
    assert "3 unlabeled cases" in r.stdout
    assert {f: _digest(os.path.join(base, f)) for f in own_files} == before
    assert sorted(os.listdir(os.path.join(base, "nnUNetPlans_2d"))) == labeled_before
    # the split is written for the 3 labeled cases only (leave-one-out), never with unlabeled cases
    splits = json.load(open(os.path.join(base, "splits_final.json")))
    assert "created a 3-fold split (leave-one-out" in r.stdout
    assert sorted(v for fold in splits for v in fold["val"]) == ["case000", "case001", "case002"]
    # the fingerprint knows only the labeled cases
    fingerprint = json.load(open(os.path.join(base, "dataset_fingerprint.json")))
    assert len(fingerprint["spacings"]) == 3
    cases = sorted(f[:-5] for f in os.listdir(pool) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
    assert cases == ["unl0000", "unl0001", "unl0002"]
    # preprocessed like a labeled case: same channels, z-scored with the dataset's intensity statistics
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    data, seg, _, props = nnUNetDatasetBlosc2(pool).load_case("unl0000")
    assert data.shape[0] == 3 and props["class_locations"] == {}
    assert set(np.unique(seg[:])) <= {-1, 0}
    # re-running is safe and does nothing when up to date
    mtime = os.path.getmtime(os.path.join(pool, POOL_MANIFEST))
    capsys.readouterr()
    main(["preprocess-unlabeled", "-d", "803", "-c", "2d", "-np", "1"])  # in process (the command: above)
    out = capsys.readouterr().out
    assert "up to date" in out and "existing split kept (3 folds)" in out
    assert os.path.getmtime(os.path.join(pool, POOL_MANIFEST)) == mtime


def _with_extra_file(raw_2d, name, writer):
    path = os.path.join(raw_2d, "imagesUnlabeled", name)
    writer(path)
    return path


@pytest.mark.parametrize("name,writer,message", [
    ("unl_bad_0000.jpg", lambda p: Image.new("RGB", (40, 40)).save(p), "file ending is not '.png'"),
    ("nochannel.png", lambda p: Image.new("RGB", (40, 40)).save(p), "4-digit channel index"),
    ("unl_extra_0001.png", lambda p: Image.new("RGB", (40, 40)).save(p), "has channel files ['_0001']"),
    ("unl_gray_0000.png", lambda p: Image.new("L", (40, 40)).save(p), "1 channel(s), dataset.json"),
    ("unl_broken_0000.png", lambda p: open(p, "wb").write(b"not a png"), "could not be read"),
])
def test_bad_unlabeled_file_is_named_and_pool_is_left_intact(raw_2d, nnunet_env, name, writer, message):
    pool = _pool(nnunet_env)
    preprocess_unlabeled(803, ["2d"], num_processes=1, verbose=False)
    manifest_before = _digest(os.path.join(pool, POOL_MANIFEST))
    path = _with_extra_file(raw_2d, name, writer)
    try:
        with pytest.raises(UnlabeledPoolError) as e:
            preprocess_unlabeled(803, ["2d"], num_processes=2, verbose=False)
        assert message in str(e.value)
        assert os.path.basename(path) in str(e.value) or os.path.basename(path).split("_0")[0] in str(e.value)
        # the previous, complete pool is untouched and nothing half-written is left behind
        assert _digest(os.path.join(pool, POOL_MANIFEST)) == manifest_before
        assert _no_temp_left(nnunet_env)
    finally:
        os.remove(path)


def test_bad_input_on_the_cli_exits_with_a_message(raw_2d, nnunet_env, capsys):
    path = _with_extra_file(raw_2d, "unl_bad_0000.jpg", lambda p: Image.new("RGB", (40, 40)).save(p))
    try:
        err = refused(capsys, ["preprocess-unlabeled", "-d", "803", "-c", "2d"])
        assert "unl_bad_0000.jpg" in err and "Traceback" not in err
    finally:
        os.remove(path)


def test_empty_and_missing_unlabeled_folder(raw_2d, nnunet_env):
    folder = os.path.join(raw_2d, "imagesUnlabeled")
    backup = folder + "_backup"
    shutil.move(folder, backup)
    try:
        with pytest.raises(UnlabeledPoolError, match="does not exist"):
            preprocess_unlabeled(803, ["2d"], verbose=False)
        os.makedirs(folder)
        with pytest.raises(UnlabeledPoolError, match="is empty"):
            preprocess_unlabeled(803, ["2d"], verbose=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(backup, folder)


def test_pool_made_with_other_plans_is_refused(raw_2d, nnunet_env):
    preprocess_unlabeled(803, ["2d"], num_processes=1, verbose=False)
    plans = json.load(open(os.path.join(_pre_base(nnunet_env), "nnUNetPlans.json")))
    assert check_pool(_pool(nnunet_env), plans, "2d", "Dataset803_T2D", "nnUNetPlans") == 3
    plans["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1.0
    with pytest.raises(UnlabeledPoolError, match="other plans") as e:
        check_pool(_pool(nnunet_env), plans, "2d", "Dataset803_T2D", "nnUNetPlans")
    assert "nnunet_ssl preprocess-unlabeled -d Dataset803_T2D -c 2d" in str(e.value)
    with pytest.raises(UnlabeledPoolError, match="does not exist") as e:
        check_pool(_pool(nnunet_env) + "_nope", plans, "2d", "Dataset803_T2D", "nnUNetPlans")
    assert "nnunet_ssl preprocess-unlabeled" in str(e.value)


def test_env_command_prints_trainer_folder():
    r = nnunet_ssl_cli("env")
    line = r.stdout.strip().splitlines()[0]
    assert line.startswith("export nnUNet_extTrainer=")
    folder = line.split("=", 1)[1]
    assert os.path.isfile(os.path.join(folder, "nnUNetTrainerMeanTeacher.py"))
