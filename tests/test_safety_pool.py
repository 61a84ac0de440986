"""Issue 18: bad unlabeled input (NaN voxels, RGBA, absurd spacing, ids of labeled cases), pools shared by plans
that preprocess alike, the default configurations, and runs killed with `kill -9` (pool and conversion)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import plan_and_preprocess, prepare, refused
from nnunet_ssl.data.pool import (POOL_MANIFEST, UnlabeledPoolError, check_pool, preprocess_unlabeled,
                                  preprocessed_pool_folder)
from nnunet_ssl.data.synthetic import write_synthetic_dataset
from nnunet_ssl.utilities.atomic import atomic_folder, new_temp_folder
from test_conversion_fixtures import case_ids, convert, make_isic, png, record

N_POOL = 40  # enough cases that a kill -9 lands while the pool is being written


@pytest.fixture(scope="module")
def many_2d(nnunet_env):
    """RGB PNG, 2 labeled, N_POOL unlabeled 32x32; planned (2d only), no pool yet."""
    return prepare(nnunet_env, 831, 2, "2d", pool=False, n_labeled=2, n_unlabeled=N_POOL, n_test=0, size=32)


@pytest.fixture(scope="module")
def small_3d(nnunet_env):
    """MetaImage (.mha: unlike SimpleITK's NIfTI reader, it keeps NaN), 2 labeled, 2 unlabeled 16^3; planned
    (3d_fullres), pool preprocessed."""
    folder = write_synthetic_dataset(nnunet_env["nnUNet_raw"], 832, "T3D", dim=3, n_labeled=2, n_unlabeled=2,
                                     n_test=0, size=16)
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled"):
        for name in os.listdir(os.path.join(folder, sub)):
            path = os.path.join(folder, sub, name)
            sitk.WriteImage(sitk.ReadImage(path), path.replace(".nii.gz", ".mha"))
            os.remove(path)
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({**dataset_json, "file_ending": ".mha"}, f)
    plan_and_preprocess(832, "3d_fullres")
    preprocess_unlabeled(832, ["3d_fullres"], num_processes=1, verbose=False)
    return folder


def _pre(nnunet_env, name):
    return os.path.join(nnunet_env["nnUNet_preprocessed"], name)


def _partials(folder):
    return sorted(d for d in os.listdir(folder) if ".partial-" in d)


def _pool_cases(pool):
    return sorted(f[:-5] for f in os.listdir(pool) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))


def _reset_2d(nnunet_env):
    """Dataset831 without pool or split: each test starts from the same state."""
    base = _pre(nnunet_env, "Dataset831_T2D")
    shutil.rmtree(preprocessed_pool_folder(base, "nnUNetPlans_2d"), ignore_errors=True)
    if os.path.exists(os.path.join(base, "splits_final.json")):
        os.remove(os.path.join(base, "splits_final.json"))
    return base


def _manifest(pool):
    with open(os.path.join(pool, POOL_MANIFEST)) as f:
        return json.load(f)


def _write_image(path, array, spacing):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


# ----------------------------------------------------------------------------------------------------------
# Bad unlabeled images: the file is named with the cause, the previous pool is untouched


@pytest.mark.parametrize("problem", ["nan", "huge_spacing", "tiny_spacing"])
def test_nan_and_absurd_spacing_are_named_with_the_cause(small_3d, nnunet_env, problem):
    pool = preprocessed_pool_folder(_pre(nnunet_env, "Dataset832_T3D"), "nnUNetPlans_3d_fullres")
    before = _manifest(pool)
    array = np.random.default_rng(0).normal(100, 10, (16, 16, 16)).astype(np.float32)
    spacing = {"nan": 1.0, "huge_spacing": 1e6, "tiny_spacing": 1e-6}[problem]
    if problem == "nan":
        array[3:5, 3:5, 3:5] = np.nan
    path = os.path.join(small_3d, "imagesUnlabeled", "aaa_bad_0000.mha")  # sorted first: fails at once
    _write_image(path, array, (1.0, 1.0, spacing))  # SimpleITK's x, y, z: the labeled cases have (1, 1, 1.5)
    try:
        with pytest.raises(UnlabeledPoolError) as e:
            preprocess_unlabeled(832, ["3d_fullres"], num_processes=1, verbose=False)
        message = str(e.value)
        assert path in message
        if problem == "nan":
            assert "8 of 4096 voxels are NaN or infinite" in message
        else:  # the file's spacing, the plans' target spacing, the shape it would resample to
            assert f"spacing ({spacing}, 1.0, 1.0)" in message and "would resample to shape (" in message
            assert "target spacing (1.5, 1.0, 1.0)" in message
        assert _manifest(pool) == before and not _partials(os.path.dirname(pool))
    finally:
        os.remove(path)


def test_rgba_png_names_channel_counts_and_alpha(many_2d, nnunet_env):
    base = _reset_2d(nnunet_env)
    path = os.path.join(many_2d, "imagesUnlabeled", "aaa_rgba_0000.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 255)).save(path)
    try:
        with pytest.raises(UnlabeledPoolError) as e:
            preprocess_unlabeled(831, ["2d"], num_processes=1, verbose=False)
        assert path in str(e.value)
        assert "image has 4 channel(s), dataset.json channel_names lists 3 (R, G, B)" in str(e.value)
        assert "RGBA" in str(e.value) and "drop the alpha channel" in str(e.value)
        assert not os.path.exists(preprocessed_pool_folder(base, "nnUNetPlans_2d")) and not _partials(base)
    finally:
        os.remove(path)


def test_unlabeled_id_of_a_labeled_case_is_refused_before_any_work(many_2d, nnunet_env):
    base = _reset_2d(nnunet_env)
    unlabeled = os.path.join(many_2d, "imagesUnlabeled", "case001_0000.png")
    shutil.copy(os.path.join(many_2d, "imagesUnlabeled", "unl0000_0000.png"), unlabeled)
    try:
        with pytest.raises(UnlabeledPoolError, match=r"\['case001'\] are also labeled cases") as e:
            preprocess_unlabeled(831, ["2d"], num_processes=1, verbose=False)
        assert unlabeled in str(e.value) and os.path.join(many_2d, "imagesTr", "case001_0000.png") in str(e.value)
        # nothing written: no pool, no split
        assert sorted(os.listdir(base)) == ["dataset.json", "dataset_fingerprint.json", "gt_segmentations",
                                            "nnUNetPlans.json", "nnUNetPlans_2d"]
    finally:
        os.remove(unlabeled)


# ----------------------------------------------------------------------------------------------------------
# Configurations: the default is what the plans have; a missing one fails before anything is written


def test_missing_configuration_fails_before_writing_and_default_is_the_plans(many_2d, nnunet_env, capsys):
    base = _reset_2d(nnunet_env)
    err = refused(capsys, ["preprocess-unlabeled", "-d", "831", "-c", "2d", "3d_fullres"])
    assert "has no configuration '3d_fullres' (available: 2d)" in err, err
    assert not os.path.exists(preprocessed_pool_folder(base, "nnUNetPlans_2d"))
    assert not os.path.exists(os.path.join(base, "splits_final.json")) and not _partials(base)
    # no -c: the plans' configurations (2d only, for PNGs)
    assert preprocess_unlabeled(831, num_processes=1, verbose=False) == [preprocessed_pool_folder(base,
                                                                                                  "nnUNetPlans_2d")]
    assert os.path.isfile(os.path.join(base, "splits_final.json"))


# ----------------------------------------------------------------------------------------------------------
# The pool's signature: exactly what preprocessing depends on


def _plan_resenc_m(dataset_id):
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import \
        nnUNetPlannerResEncM
    n_proc_da = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = "1"  # nnU-Net 2.8's planner calls torch.set_num_threads with it
    try:
        nnUNetPlannerResEncM(dataset_id).plan_experiment()
    finally:
        os.environ["nnUNet_n_proc_DA"] = n_proc_da


def test_plans_that_preprocess_alike_share_the_pool(small_3d, nnunet_env):
    base = _pre(nnunet_env, "Dataset832_T3D")
    name, pool = "Dataset832_T3D", preprocessed_pool_folder(base, "nnUNetPlans_3d_fullres")
    preprocess_unlabeled(832, ["3d_fullres"], num_processes=1, verbose=False)
    _plan_resenc_m(832)
    with open(os.path.join(base, "nnUNetResEncUNetMPlans.json")) as f:
        resenc = json.load(f)
    assert resenc["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert resenc["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert check_pool(pool, resenc, "3d_fullres", name, "nnUNetResEncUNetMPlans") == 2
    mtime = os.path.getmtime(os.path.join(pool, POOL_MANIFEST))
    assert preprocess_unlabeled(832, ["3d_fullres"], "nnUNetResEncUNetMPlans", num_processes=1, verbose=False)
    assert os.path.getmtime(os.path.join(pool, POOL_MANIFEST)) == mtime  # up to date: not rebuilt
    # another batch size or network, same preprocessing: same pool; another normalisation: refused
    resenc["configurations"]["3d_fullres"]["batch_size"] += 1
    resenc["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"] -= 1
    assert check_pool(pool, resenc, "3d_fullres", name, "nnUNetResEncUNetMPlans") == 2
    changes = [("normalization_schemes", ["RescaleTo01Normalization"]), ("use_mask_for_norm", [True]),
               ("spacing", [1.5, 1.0, 0.5]), ("resampling_fn_data_kwargs", {"is_seg": False, "order": 1})]
    for key, value in changes:
        changed = json.loads(json.dumps(resenc))
        changed["configurations"]["3d_fullres"][key] = value
        with pytest.raises(UnlabeledPoolError, match="other plans"):
            check_pool(pool, changed, "3d_fullres", name, "nnUNetResEncUNetMPlans")
    resenc["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1  # CT normalisation uses it
    with pytest.raises(UnlabeledPoolError, match="other plans"):
        check_pool(pool, resenc, "3d_fullres", name, "nnUNetResEncUNetMPlans")


# ----------------------------------------------------------------------------------------------------------
# Temporary folders of killed runs


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _owned_by(path, pid):
    """A temporary folder of new_temp_folder, as if process `pid` (on this host) had made it."""
    renamed = path.replace(f"-pid{os.getpid()}-", f"-pid{pid}-")
    os.rename(path, renamed)
    return renamed


def test_stale_temp_folders_are_removed_never_a_live_one(tmp_path):
    target = tmp_path / "Dataset001_X"
    dead = _owned_by(new_temp_folder(str(tmp_path), target.name), _dead_pid())
    os.mkdir(dead + ".old")  # what an interrupted replace_folder leaves
    other_target = _owned_by(new_temp_folder(str(tmp_path), target.name + "_unlabeled"), _dead_pid())
    other_host = tmp_path / f".{target.name}.partial-0123abcd-pid{_dead_pid()}-another-host"
    other_host.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        concurrent = _owned_by(new_temp_folder(str(tmp_path), target.name), sleeper.pid)
        with atomic_folder(str(target)) as tmp:
            open(os.path.join(tmp, "f"), "w").close()
        assert sorted(os.listdir(tmp_path)) == sorted([target.name, os.path.basename(concurrent),
                                                       os.path.basename(other_target), other_host.name])
    finally:
        sleeper.kill()
        sleeper.wait()


def _killed_mid_run(cmd, temp_parent, temp_prefix, enough, env=None):
    """Start `cmd` in its own process group, kill -9 the group once a temporary folder named temp_prefix* in
    temp_parent holds `enough` files. Returns whether that happened while the command was running."""
    process = subprocess.Popen([str(c) for c in cmd], start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    seen = False
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        temps = [os.path.join(temp_parent, d) for d in os.listdir(temp_parent) if d.startswith(temp_prefix)] \
            if os.path.isdir(temp_parent) else []
        if any(sum(len(files) for _, _, files in os.walk(t)) >= enough for t in temps):
            seen = True
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait()  # reaped: its process id is gone
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    assert seen or process.returncode == 0, stderr
    return seen


def test_killed_pool_preprocessing_then_rerun(many_2d, nnunet_env):
    base = _reset_2d(nnunet_env)
    pool = preprocessed_pool_folder(base, "nnUNetPlans_2d")
    seen = _killed_mid_run([sys.executable, "-m", "nnunet_ssl", "preprocess-unlabeled", "-d", "831", "-np", "1"],
                           base, ".nnUNetPlans_2d_unlabeled.partial-", enough=6)
    if os.path.exists(pool):  # nothing half-written is visible: the pool is absent or complete
        assert _pool_cases(pool) == sorted(_manifest(pool)["cases"]) and len(_pool_cases(pool)) == N_POOL
    else:
        assert _partials(base), "the killed run's temporary folder"
    assert preprocess_unlabeled(831, num_processes=1, verbose=False) == [pool]
    assert not _partials(base)  # the killed run's temporary folder is gone
    assert _pool_cases(pool) == [f"unl{i:04d}" for i in range(N_POOL)]
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    dataset = nnUNetDatasetBlosc2(pool)
    for case in ("unl0000", f"unl{N_POOL - 1:04d}"):
        data = dataset.load_case(case)[0][:]
        assert data.shape == (3, 1, 32, 32) and np.isfinite(data).all()
    assert seen, "the kill landed after the run had finished (the invariants held anyway)"


def test_killed_conversion_then_rerun(tmp_path):
    src, out_root = tmp_path / "src", tmp_path / "raw"
    made = make_isic(src, 2016, sizes={"training": 150, "test": 2})
    args = ["isic2016", src, "-d", 21, "--labeled", 3, "-o", out_root]
    seen = _killed_mid_run([sys.executable, "-m", "nnunet_ssl", "convert", *args, "-np", "1"], out_root,
                           ".Dataset021_", enough=4)
    target = out_root / "Dataset021_ISIC2016"
    if target.exists():  # complete, never fewer cases than asked for
        assert len(case_ids(target / "imagesUnlabeled", ".png")) == 147 and (target / "ssl_split.json").is_file()
    else:
        assert _partials(out_root), "the killed run's temporary folder"
    out = convert(*args)
    assert _partials(out_root) == [] and sorted(os.listdir(out_root)) == ["Dataset021_ISIC2016"]
    rec = record(out)
    assert case_ids(out / "imagesTr", ".png") == case_ids(out / "labelsTr", ".png") == set(rec["labeled"])
    assert len(rec["labeled"]) == 3 and case_ids(out / "imagesUnlabeled", ".png") == set(rec["unlabeled"])
    assert len(rec["unlabeled"]) == 147 and case_ids(out / "imagesTs", ".png") == set(made["test"])
    for case in rec["labeled"]:
        assert np.array_equal(png(out / "imagesTr" / f"{case}_0000.png"), made["training"][case][0])
        assert np.array_equal(png(out / "labelsTr" / f"{case}.png"), made["training"][case][1])
    assert seen, "the kill landed after the run had finished (the invariants held anyway)"
