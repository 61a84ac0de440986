"""ISIC 2016/2017/2018 and PH2 converters on small sources written in the real layouts (JPEG, PNG, 1-bit and
24-bit BMP), with the traps of the real downloads and bad inputs; plus the atomic write and re-runs."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nnunet_ssl.dataset_conversion.core import ConversionError
from test_conversion_fixtures import (ISIC_FOLDERS, case_ids, convert, dataset_json, leftovers, make_isic, make_ph2,
                                      png, record, seeded, snapshot)


@pytest.fixture
def isic2016(tmp_path):
    src = tmp_path / "src"
    return src, make_isic(src, 2016)


def check_case(dataset, case, image, mask, folder="Tr"):
    assert np.array_equal(png(dataset / f"images{folder}" / f"{case}_0000.png"), image)
    assert np.array_equal(png(dataset / f"labels{folder}" / f"{case}.png"), mask)


def test_isic2016_split_files_and_values(isic2016, tmp_path):
    src, made = isic2016
    before = snapshot(src)
    out = convert("isic2016", src, "-d", 11, "--labeled", 2, "-o", tmp_path / "raw")
    training = sorted(made["training"])
    labeled, unlabeled = seeded(training)[:2], seeded(training)[2:]
    assert case_ids(out / "imagesTr", ".png") == case_ids(out / "labelsTr", ".png") == set(labeled)
    assert case_ids(out / "imagesUnlabeled", ".png") == set(unlabeled)
    assert case_ids(out / "imagesTs", ".png") == case_ids(out / "labelsTs", ".png") == set(made["test"])
    for case in labeled:
        check_case(out, case, *made["training"][case])
    for case, (image, mask) in made["test"].items():
        check_case(out, case, image, mask, "Ts")
    for case in unlabeled:  # unlabeled: image only, its label nowhere
        assert np.array_equal(png(out / "imagesUnlabeled" / f"{case}_0000.png"), made["training"][case][0])
        assert not list(out.rglob(f"{case}.png"))
    meta = dataset_json(out)
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".png"
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["labels"] == {"background": 0, "lesion": 1}
    rec = record(out)
    assert rec["labeled"] == labeled and rec["unlabeled"] == unlabeled and rec["seed"] == 0
    assert rec["training_order"] == seeded(training)
    assert snapshot(src) == before


def test_isic2016_seed_changes_the_labeled_cases(isic2016, tmp_path):
    src, made = isic2016
    out = convert("isic2016", src, "-d", 12, "--labeled", 2, "--seed", 7, "-o", tmp_path / "raw")
    assert record(out)["labeled"] == seeded(made["training"], 7)[:2]


def test_isic2016_train_list_first_n_are_labeled(isic2016, tmp_path):
    src, made = isic2016
    listed = sorted(made["training"], reverse=True)[:4]  # a list order unlike any sort
    (tmp_path / "train.list").write_text("\r\n".join(listed) + "\r\n\n")
    out = convert("isic2016", src, "-d", 13, "--labeled-fraction", 0.5, "--train-list", tmp_path / "train.list",
                  "-o", tmp_path / "raw")
    rec = record(out)
    assert rec["labeled"] == listed[:2] and rec["unlabeled"] == listed[2:] and rec["seed"] is None
    assert set(rec["not_used"]) == set(made["training"]) - set(listed)
    assert rec["list_files"]["train"]["path"] == str(tmp_path / "train.list")


def test_isic2017_takes_jpg_only_and_routes_validation(tmp_path):
    src = tmp_path / "src"
    made = make_isic(src, 2017)
    out = convert("isic2017", src, "-d", 14, "-o", tmp_path / "raw")
    assert case_ids(out / "imagesTr", ".png") == set(made["training"])  # no *_superpixels, no CSV
    assert not (out / "imagesUnlabeled").exists()  # validation not converted by default
    assert dataset_json(out)["numTraining"] == len(made["training"])
    out = convert("isic2017", src, "-d", 15, "--validation-to", "unlabeled", "-o", tmp_path / "raw")
    assert case_ids(out / "imagesUnlabeled", ".png") == set(made["validation"])
    out = convert("isic2017", src, "-d", 16, "--validation-to", "test", "-o", tmp_path / "raw")
    assert case_ids(out / "labelsTs", ".png") == set(made["validation"]) | set(made["test"])


def test_isic2018_inputs_without_ground_truth(tmp_path):
    src = tmp_path / "src"
    made = make_isic(src, 2018, ground_truth=("training",))
    with pytest.raises(ConversionError, match="ISIC2018_Task1_Test_GroundTruth.*--test-to unlabeled"):
        convert("isic2018", src, "-d", 17, "-o", tmp_path / "raw")
    assert leftovers(tmp_path / "raw") == []
    out = convert("isic2018", src, "-d", 17, "--test-to", "unlabeled", "--validation-to", "unlabeled",
                  "--labeled", 5, "-o", tmp_path / "raw")
    extra = set(made["test"]) | set(made["validation"])
    assert case_ids(out / "imagesUnlabeled", ".png") == extra | set(seeded(made["training"])[5:])
    assert not (out / "imagesTs").exists()
    assert record(out)["extra_unlabeled"] == sorted(made["test"])


def test_max_size_smooth_image_nearest_mask(tmp_path):
    src = tmp_path / "src"
    made = make_isic(src, 2016, sizes={"training": 1, "test": 0})
    case = next(iter(made["training"]))
    width, height = 300, 200
    image = np.zeros((height, width, 3), np.uint8)
    image[:, 101:] = 255  # a sharp edge: smooth resampling makes in-between values there
    mask = np.zeros((height, width), np.uint8)
    mask[40:150, 30:170] = 1
    Image.fromarray(image).save(src / ISIC_FOLDERS[2016]["training"][0] / f"{case}.jpg", quality=100)
    Image.fromarray(mask * 255).save(src / ISIC_FOLDERS[2016]["training"][1] / f"{case}_Segmentation.png")
    max_size = 64
    out = convert("isic2016", src, "-d", 18, "--max-size", max_size, "-o", tmp_path / "raw")
    small_image, small_mask = png(out / "imagesTr" / f"{case}_0000.png"), png(out / "labelsTr" / f"{case}.png")
    expected_shape = (round(height * max_size / width), max_size)
    assert small_image.shape[:2] == small_mask.shape == expected_shape
    assert set(np.unique(small_mask)) == {0, 1}  # no label invented
    assert abs(small_mask.mean() - mask.mean()) < 0.02
    grey = small_image[..., 0]
    assert np.any((grey > 30) & (grey < 225))  # smooth, not nearest neighbour
    assert grey[:, : int(100 * max_size / width) - 2].max() < 30 and grey[:, -5:].min() > 225


def write_bad(src, case, problem, subset="training"):
    """Break one case of an ISIC 2016 source in the way `problem` names; returns the file it broke."""
    data, gt = (src / f for f in ISIC_FOLDERS[2016][subset])
    image, mask_file = data / f"{case}.jpg", gt / f"{case}_Segmentation.png"
    width, height = Image.open(image).size
    if problem == "mask value 128":
        values = png(mask_file).copy()
        values[0, 0] = 128
        Image.fromarray(values).save(mask_file)
    elif problem == "mask size":
        Image.fromarray(np.zeros((height + 1, width), np.uint8)).save(mask_file)
    elif problem == "missing mask":
        mask_file.unlink()
    elif problem == "unreadable image":
        image.write_bytes(b"not a jpeg at all")
        return image
    elif problem == "colour mask":
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[0, 0] = (255, 0, 0)
        Image.fromarray(rgb).save(mask_file)
    return mask_file


BAD_INPUTS = {"mask value 128": "unexpected label values 128 \\(expected 0, 255\\)",
              "mask size": "size mismatch: mask is", "missing mask": "missing mask for image",
              "unreadable image": "cannot read image", "colour mask": "colour mask"}


@pytest.mark.parametrize("problem", sorted(BAD_INPUTS))
def test_isic_bad_input_stops_names_file_leaves_nothing(isic2016, tmp_path, problem):
    src, made = isic2016
    case = sorted(made["training"])[3]
    broken = write_bad(src, case, problem)
    before = snapshot(src)
    with pytest.raises(ConversionError, match=BAD_INPUTS[problem]) as error:
        convert("isic2016", src, "-d", 19, "-o", tmp_path / "raw")
    assert str(broken) in str(error.value)
    assert leftovers(tmp_path / "raw") == []
    assert snapshot(src) == before


def test_isic_skip_bad_summarises(isic2016, tmp_path, capsys):
    src, made = isic2016
    bad = sorted(made["training"])[:2]
    write_bad(src, bad[0], "mask value 128")
    write_bad(src, bad[1], "unreadable image")
    out = convert("isic2016", src, "-d", 20, "--skip-bad", "-o", tmp_path / "raw")
    good = set(made["training"]) - set(bad)
    assert case_ids(out / "imagesTr", ".png") == good and dataset_json(out)["numTraining"] == len(good)
    skipped = {s["case"]: s["error"] for s in record(out)["skipped_bad"]}
    assert set(skipped) == set(bad) and "unexpected label values 128" in skipped[bad[0]]
    err = capsys.readouterr().err
    assert all(case in err for case in bad)


def test_parallel_workers_write_the_same_files_and_stop_on_errors(isic2016, tmp_path):
    src, made = isic2016
    one = convert("isic2016", src, "-d", 21, "--labeled", 3, "-np", 1, "-o", tmp_path / "a")
    two = convert("isic2016", src, "-d", 21, "--labeled", 3, "-np", 2, "-o", tmp_path / "b")
    files = lambda d: {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*.png")}  # noqa: E731
    assert files(one) == files(two) and len(files(one)) > 0
    write_bad(src, sorted(made["training"])[-1], "colour mask")
    with pytest.raises(ConversionError, match="colour mask"):
        convert("isic2016", src, "-d", 21, "-np", 2, "-o", tmp_path / "c")
    assert leftovers(tmp_path / "c") == []


def test_rerun_replaces_and_other_arguments_are_refused(isic2016, tmp_path):
    src, made = isic2016
    raw = tmp_path / "raw"
    out = convert("isic2016", src, "-d", 22, "--labeled", 2, "-o", raw)
    (out / "marker").write_text("from the first run")
    assert convert("isic2016", src, "-d", 22, "--labeled", 2, "-o", raw, "-np", 2) == out  # -np is not recorded
    assert not (out / "marker").exists()
    (out / "marker").write_text("from the second run")
    with pytest.raises(ConversionError, match="converted with other arguments.*--overwrite"):
        convert("isic2016", src, "-d", 22, "--labeled", 3, "-o", raw)
    assert (out / "marker").exists() and dataset_json(out)["numTraining"] == 2
    convert("isic2016", src, "-d", 22, "--labeled", 3, "-o", raw, "--overwrite")
    assert dataset_json(out)["numTraining"] == 3 and not (out / "marker").exists()
    assert leftovers(raw) == [out.name]


def test_failed_rerun_keeps_previous_dataset(isic2016, tmp_path):
    src, made = isic2016
    raw = tmp_path / "raw"
    out = convert("isic2016", src, "-d", 23, "-o", raw)
    before = snapshot(out)
    write_bad(src, sorted(made["test"])[-1], "missing mask", "test")  # fails late, in the test set
    with pytest.raises(ConversionError, match="missing mask"):
        convert("isic2016", src, "-d", 23, "-o", raw)
    assert snapshot(out) == before and leftovers(raw) == [out.name]


def test_refuses_foreign_folder_and_duplicate_id(isic2016, tmp_path):
    src, _ = isic2016
    raw = tmp_path / "raw"
    (raw / "Dataset024_ISIC2016").mkdir(parents=True)
    with pytest.raises(ConversionError, match="not written by `nnunet_ssl convert`"):
        convert("isic2016", src, "-d", 24, "-o", raw)
    (raw / "Dataset025_Other").mkdir()
    with pytest.raises(ConversionError, match="Dataset025_Other already uses dataset id 025"):
        convert("isic2016", src, "-d", 25, "-o", raw)


def test_ph2_bmp_flavours_and_traps(tmp_path):
    src = tmp_path / "PH2"
    made = make_ph2(src)
    before = snapshot(src)
    out = convert("ph2", src, "-d", 30, "-o", tmp_path / "raw")
    assert case_ids(out / "imagesTr", ".png") == set(made)
    for case, (image, mask) in made.items():  # 1-bit and 24-bit masks alike; the all-white JPEG copy unused
        check_case(out, case, image, mask)
    assert not (out / "imagesTs").exists() and snapshot(src) == before


def test_ph2_test_fraction_and_source_folder_variants(tmp_path):
    src = tmp_path / "PH2"
    made = make_ph2(src)
    out = convert("ph2", src / "PH2 Dataset images", "-d", 31, "--test-fraction", 0.34, "--labeled", 1,
                  "-o", tmp_path / "raw")
    order = seeded(made)
    n_test = int(np.floor(0.34 * len(made) + 0.5))
    assert case_ids(out / "labelsTs", ".png") == set(order[:n_test])
    assert record(out)["labeled"] == order[n_test:n_test + 1]


@pytest.mark.parametrize("problem, expected", [
    ("grey 100", "unexpected label values 100"), ("no mask", "missing mask"), ("truncated", "cannot read")])
def test_ph2_bad_masks(tmp_path, problem, expected):
    src = tmp_path / "PH2"
    made = make_ph2(src)
    case = sorted(made)[2]
    lesion = src / "PH2 Dataset images" / case / f"{case}_lesion" / f"{case}_lesion.bmp"
    if problem == "grey 100":
        Image.fromarray((made[case][1] * 100).astype(np.uint8)).save(lesion)
    elif problem == "no mask":
        lesion.unlink()
    else:
        lesion.write_bytes(lesion.read_bytes()[:40])
    with pytest.raises(ConversionError, match=expected) as error:
        convert("ph2", src, "-d", 32, "-o", tmp_path / "raw")
    assert str(lesion) in str(error.value) and leftovers(tmp_path / "raw") == []


def test_ph2_as_test_set_of_isic(tmp_path):
    raw = tmp_path / "raw"
    isic = make_isic(tmp_path / "isic", 2018)
    target = convert("isic2018", tmp_path / "isic", "-d", 33, "--max-size", 32, "-o", raw)
    isic_test = snapshot(target / "imagesTs")
    made = make_ph2(tmp_path / "PH2")
    with pytest.raises(ConversionError, match="imagesTs already holds .*--test-folder-suffix"):
        convert("ph2", tmp_path / "PH2", "--as-test-set-of", "Dataset033_ISIC2018", "-o", raw)
    for _ in range(2):  # the second run replaces the first one's files
        convert("ph2", tmp_path / "PH2", "--as-test-set-of", 33, "--test-folder-suffix", "_PH2", "-o", raw)
    assert case_ids(target / "imagesTs_PH2", ".png") == case_ids(target / "labelsTs_PH2", ".png") == set(made)
    assert all(max(png(p).shape[:2]) <= 32 for p in (target / "imagesTs_PH2").iterdir())  # ISIC's --max-size
    assert snapshot(target / "imagesTs") == isic_test and case_ids(target / "imagesTs", ".png") == set(isic["test"])
    assert dataset_json(target)["numTraining"] == len(isic["training"])
    assert not [n for n in os.listdir(target) if n.startswith(".")]


def test_ph2_as_test_set_refuses_3d_dataset(tmp_path):
    raw = tmp_path / "raw" / "Dataset034_Vol"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, '
                                      '"numTraining": 1, "file_ending": ".nii.gz"}')
    make_ph2(tmp_path / "PH2", n=2)
    with pytest.raises(ConversionError, match="cannot hold PH2 as its test set: file_ending '.nii.gz'"):
        convert("ph2", tmp_path / "PH2", "--as-test-set-of", raw, "-o", tmp_path / "raw")


def test_nnunet_ssl_command_exit_code_and_message(tmp_path):
    missing = tmp_path / "nowhere"
    r = subprocess.run([sys.executable, "-m", "nnunet_ssl", "convert", "ph2", str(missing), "-d", "40", "-o",
                        str(tmp_path / "raw")], capture_output=True, encoding="utf-8", errors="replace")
    assert r.returncode == 2 and r.stderr.startswith("nnunet_ssl: error: ") and str(missing) in r.stderr
    r = subprocess.run([sys.executable, "-m", "nnunet_ssl", "convert", "--help"], capture_output=True,
                       encoding="utf-8", errors="replace")
    assert r.returncode == 0 and all(d in r.stdout for d in ("isic2018", "ph2", "la", "pancreas", "brats", "flare"))
    shutil.rmtree(tmp_path / "raw", ignore_errors=True)
