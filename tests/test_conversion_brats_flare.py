"""BraTS 2019 (ssl and full tasks) and FLARE 2022 converters on small NIfTI sources in the real layouts."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.dataset_conversion.core import ConversionError
from test_conversion_fixtures import (box, case_ids, convert, dataset_json, leftovers, record, seeded, snapshot,
                                      write_nifti)

BRATS_ROOT = "MICCAI_BraTS_2019_Data_Training"
MODALITIES = ("t1", "t1ce", "t2", "flair")
SHAPE = (6, 9, 8)
SPACING, ORIGIN = (1.0, 1.0, 1.0), (0.0, -239.0, 0.0)


def brats_seg():
    """Edema (2) around a core of necrosis (1) and enhancing tumour (4)."""
    seg = box(SHAPE, (1, 5), (1, 8), (1, 7), value=2)
    seg[2:4, 3:6, 2:4] = 1
    seg[2:4, 3:6, 4:6] = 4
    return seg


def make_brats(root, grades=(("HGG", 4), ("LGG", 2))):
    """Cases with a distinct constant offset per modality (so channel order shows); one case in plain .nii."""
    made, rng = {}, np.random.default_rng(0)
    for grade, n in grades:
        for i in range(n):
            case = f"BraTS19_{grade}_{i:03d}"
            folder = root / BRATS_ROOT / grade / case
            ending = ".nii" if (grade, i) == ("LGG", 0) else ".nii.gz"
            channels = {}
            for m, modality in enumerate(MODALITIES):
                channels[modality] = (1000 * (m + 1) + rng.integers(0, 100, SHAPE)).astype(np.int16)
                write_nifti(folder / f"{case}_{modality}{ending}", channels[modality], SPACING, ORIGIN)
            write_nifti(folder / f"{case}_seg{ending}", brats_seg(), SPACING, ORIGIN)
            made[case] = channels
    (root / BRATS_ROOT / "name_mapping.csv").write_text("Grade,BraTS_2019_subject_ID\n")
    return made


def array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_brats_ssl_task_flair_whole_tumour_seeded_split(tmp_path):
    made = make_brats(tmp_path / "src")
    before = snapshot(tmp_path / "src")
    out = convert("brats", tmp_path / "src", "-d", 70, "--split-sizes", 3, 1, 2, "--labeled", 2,
                  "-o", tmp_path / "raw")
    order = seeded(made)
    assert record(out)["labeled"] == order[:2] and record(out)["unlabeled"] == order[2:3]
    assert case_ids(out / "imagesTs", ".nii.gz") == set(order[4:])
    assert record(out)["validation"] == {"cases": [order[3]], "written_to": "skip"}
    case = order[0]
    assert np.array_equal(array(out / "imagesTr" / f"{case}_0000.nii.gz"), made[case]["flair"])
    assert not (out / "imagesTr" / f"{case}_0001.nii.gz").exists()
    assert np.array_equal(array(out / "labelsTr" / f"{case}.nii.gz"), (brats_seg() > 0).astype(np.uint8))
    meta = dataset_json(out)
    assert meta["labels"] == {"background": 0, "whole tumor": 1} and meta["channel_names"] == {"0": "FLAIR"}
    assert snapshot(tmp_path / "src") == before


def test_brats_full_task_matches_nnunet_region_convention(tmp_path):
    made = make_brats(tmp_path / "src")
    out = convert("brats", tmp_path / "src", "-d", 71, "--task", "full", "-o", tmp_path / "raw")
    assert case_ids(out / "labelsTr", ".nii.gz") == set(made)  # .nii case included, written as .nii.gz
    case = "BraTS19_LGG_000"
    for channel, modality in enumerate(MODALITIES):  # nnU-Net's order: T1, T1ce, T2, FLAIR
        assert np.array_equal(array(out / "imagesTr" / f"{case}_{channel:04d}.nii.gz"), made[case][modality])
    seg, label = brats_seg(), array(out / "labelsTr" / f"{case}.nii.gz")
    for source_value, nnunet_value in ((0, 0), (2, 1), (1, 2), (4, 3)):  # Dataset137_BraTS21's remapping
        assert np.all(label[seg == source_value] == nnunet_value)
    meta = dataset_json(out)
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3] and len(meta["channel_names"]) == 4


def test_brats_split_sizes_must_fit(tmp_path):
    make_brats(tmp_path / "src")
    with pytest.raises(ConversionError, match="--split-sizes 250 25 60 needs 335 cases, the source has 6"):
        convert("brats", tmp_path / "src", "-d", 72, "-o", tmp_path / "raw")


def break_brats(root, problem):
    folder = root / BRATS_ROOT / "HGG" / "BraTS19_HGG_001"
    if problem == "seg value 3":
        write_nifti(folder / "BraTS19_HGG_001_seg.nii.gz", brats_seg() + (brats_seg() == 1) * 2, SPACING, ORIGIN)
        return folder / "BraTS19_HGG_001_seg.nii.gz"
    if problem == "missing t2":
        (folder / "BraTS19_HGG_001_t2.nii.gz").unlink()
        return folder / "BraTS19_HGG_001_t2.nii.gz"
    write_nifti(folder / "BraTS19_HGG_001_flair.nii.gz", np.zeros(SHAPE, np.int16), (1.0, 1.0, 1.2), ORIGIN)
    return folder / "BraTS19_HGG_001_flair.nii.gz"


@pytest.mark.parametrize("problem, expected", [
    ("seg value 3", "unexpected label values 3"), ("missing t2", "file does not exist"),
    ("flair spacing", "geometry differs from the case's first channel")])
def test_brats_bad_inputs(tmp_path, problem, expected):
    make_brats(tmp_path / "src")
    broken = break_brats(tmp_path / "src", problem)
    with pytest.raises(ConversionError, match=expected) as error:
        convert("brats", tmp_path / "src", "-d", 73, "--task", "full", "-o", tmp_path / "raw")
    assert str(broken) in str(error.value) and leftovers(tmp_path / "raw") == []


FLARE_SHAPE = (5, 7, 6)


def flare_case(folder_images, folder_labels, case, rng, channel_suffix="_0000"):
    image = rng.integers(-1000, 1000, FLARE_SHAPE).astype(np.int16)
    write_nifti(folder_images / f"{case}{channel_suffix}.nii.gz", image, (0.8, 0.8, 2.5), (10.0, 20.0, 30.0))
    label = rng.integers(0, 14, FLARE_SHAPE).astype(np.uint8)
    if folder_labels is not None:
        write_nifti(folder_labels / f"{case}.nii.gz", label, (0.8, 0.8, 2.5), (10.0, 20.0, 30.0))
    return image, label


def make_flare(root, labeled_folder="FLARE22_LabeledCase50"):
    rng = np.random.default_rng(5)
    labeled = root / "Training" / labeled_folder
    made = {f"FLARE22_Tr_{i:04d}": flare_case(labeled / "images", labeled / "labels", f"FLARE22_Tr_{i:04d}", rng,
                                              "" if i == 3 else "_0000") for i in (1, 2, 3)}
    unlabeled = {}
    for folder, numbers in (("FLARE22_UnlabeledCase1-1000", (1, 2)), ("FLARE22_UnlabeledCase1001-2000", (1001,))):
        for n in numbers:
            unlabeled[f"Case_{n:05d}"] = flare_case(root / "Training" / folder, None, f"Case_{n:05d}", rng)
    tuning = {f"FLARE22_Ts_{i:04d}": flare_case(root / "Tuning" / "images", root / "Tuning" / "labels",
                                                f"FLARE22_Ts_{i:04d}", rng) for i in (1, 2)}
    return made, unlabeled, tuning


def test_flare_layout_copy_and_labels(tmp_path):
    made, unlabeled, tuning = make_flare(tmp_path / "FLARE22")
    before = snapshot(tmp_path / "FLARE22")
    out = convert("flare", tmp_path / "FLARE22", "-d", 80, "-o", tmp_path / "raw")
    assert case_ids(out / "imagesTr", ".nii.gz") == set(made) == case_ids(out / "labelsTr", ".nii.gz")
    assert case_ids(out / "imagesUnlabeled", ".nii.gz") == set(unlabeled)
    assert case_ids(out / "imagesTs", ".nii.gz") == set(tuning)
    src_image = tmp_path / "FLARE22" / "Training" / "FLARE22_LabeledCase50" / "images" / "FLARE22_Tr_0001_0000.nii.gz"
    assert (out / "imagesTr" / "FLARE22_Tr_0001_0000.nii.gz").read_bytes() == src_image.read_bytes()
    for case, (image, label) in made.items():
        assert np.array_equal(array(out / "labelsTr" / f"{case}.nii.gz"), label)
    meta = dataset_json(out)
    assert meta["numTraining"] == 3 and len(meta["labels"]) == 14 and meta["labels"]["left kidney"] == 13
    assert meta["labels"]["liver"] == 1 and meta["channel_names"] == {"0": "CT"}
    assert snapshot(tmp_path / "FLARE22") == before


def test_flare_loose_folder_name_limits_and_labeled(tmp_path):
    made, unlabeled, _ = make_flare(tmp_path / "FLARE22", labeled_folder="FLARE_LabeledCase50")
    out = convert("flare", tmp_path / "FLARE22", "-d", 81, "--labeled", 2, "--extra-unlabeled-limit", 1,
                  "-o", tmp_path / "raw")
    order = seeded(made)
    assert case_ids(out / "imagesTr", ".nii.gz") == set(order[:2])
    assert case_ids(out / "imagesUnlabeled", ".nii.gz") == {order[2], sorted(unlabeled)[0]}
    out = convert("flare", tmp_path / "FLARE22", "-d", 82, "--no-extra-unlabeled", "-o", tmp_path / "raw")
    assert not (out / "imagesUnlabeled").exists()


@pytest.mark.parametrize("problem, expected", [
    ("label value 14", "unexpected label values 14"), ("label size", "geometry differs from the image"),
    ("missing label", "missing label")])
def test_flare_bad_inputs(tmp_path, problem, expected):
    make_flare(tmp_path / "FLARE22")
    label = tmp_path / "FLARE22" / "Training" / "FLARE22_LabeledCase50" / "labels" / "FLARE22_Tr_0002.nii.gz"
    if problem == "label value 14":
        write_nifti(label, np.full(FLARE_SHAPE, 14, np.uint8), (0.8, 0.8, 2.5), (10.0, 20.0, 30.0))
    elif problem == "label size":
        write_nifti(label, np.zeros((5, 7, 5), np.uint8), (0.8, 0.8, 2.5), (10.0, 20.0, 30.0))
    else:
        label.unlink()
    with pytest.raises(ConversionError, match=expected) as error:
        convert("flare", tmp_path / "FLARE22", "-d", 83, "-o", tmp_path / "raw")
    assert str(label) in str(error.value) and leftovers(tmp_path / "raw") == []
    out = convert("flare", tmp_path / "FLARE22", "-d", 83, "--skip-bad", "-o", tmp_path / "raw")
    assert [s["case"] for s in json.loads((out / "ssl_split.json").read_text())["skipped_bad"]] == ["FLARE22_Tr_0002"]
