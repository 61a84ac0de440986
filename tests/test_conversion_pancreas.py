"""Pancreas-CT converter: DICOM series (file names in an order unlike the slice positions) with TCIA-style
NIfTI labels, and the HDF5 version with its lists. The central check: after conversion the label sits on the
bright structure it marks in the CT, whatever the file-name order and the label's voxel order."""
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.dataset_conversion.core import ConversionError
from test_conversion_fixtures import (box, case_ids, convert, leftovers, record, snapshot, write_dicom_series,
                                      write_h5, write_nifti)

SHAPE = (10, 14, 16)                       # z, y, x
SPACING, ORIGIN = (0.8, 0.7, 2.0), (-50.0, -60.0, 100.0)
LABELS = "TCIA_pancreas_labels-02-05-2017"


def ct_volume(seed):
    """Soft tissue with a slow gradient along z (so the slice order shows) and a bright structure in an
    asymmetric corner (so a flip of any axis moves it)."""
    rng = np.random.default_rng(seed)
    volume = (-100 + 5 * np.arange(SHAPE[0])[:, None, None] + rng.integers(-20, 20, SHAPE)).astype(np.int16)
    structure = box(SHAPE, (6, 9), (2, 6), (9, 14))
    volume[structure == 1] = 300 + rng.integers(0, 50, int(structure.sum()))
    return volume, structure


def name_order(seed):
    """File number of each slice: a shuffle, so neither name nor number sorting gives the position order."""
    order = np.random.default_rng(seed).permutation(SHAPE[0])
    assert not np.array_equal(order, np.sort(order)) and not np.array_equal(order, np.sort(order)[::-1])
    return [int(i) for i in order]


def write_flipped_label(path, structure):
    """The label in physical alignment with the CT but stored top slice first (z axis reversed in the voxel
    order, direction z = -1, origin at the top slice): only the header geometry relates it to the CT."""
    top = ORIGIN[2] + (SHAPE[0] - 1) * SPACING[2]
    write_nifti(path, structure[::-1].copy(), SPACING, (ORIGIN[0], ORIGIN[1], top), (1, 0, 0, 0, 1, 0, 0, 0, -1))


def make_pancreas_dicom(root):
    """PANCREAS_0001 (label flipped), _0002 (label on the CT grid), _0003 (no label), label0004 (no CT)."""
    made = {}
    for number in (1, 2, 3):
        volume, structure = ct_volume(number)
        series = root / "Pancreas-CT" / f"PANCREAS_{number:04d}" / "11-24-2015-PANCREAS0001-Pancreas-18957" / \
            "Pancreas-99667"
        write_dicom_series(series, volume, SPACING, ORIGIN, name_order(number))
        made[f"PANCREAS_{number:04d}"] = (volume, structure, series)
    write_flipped_label(root / LABELS / "label0001.nii.gz", made["PANCREAS_0001"][1])
    write_nifti(root / LABELS / "label0002.nii.gz", made["PANCREAS_0002"][1], SPACING, ORIGIN)
    write_nifti(root / LABELS / "label0004.nii.gz", made["PANCREAS_0002"][1], SPACING, ORIGIN)
    return made


@pytest.fixture
def pancreas(tmp_path):
    src = tmp_path / "NIH"
    return src, make_pancreas_dicom(src)


def read(path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def test_pancreas_dicom_image_and_label_align(pancreas, tmp_path):
    src, made = pancreas
    before = snapshot(src)
    out = convert("pancreas", src, "-d", 60, "-o", tmp_path / "raw")
    assert case_ids(out / "imagesTr", ".nii.gz") == {"PANCREAS_0001", "PANCREAS_0002"}
    assert case_ids(out / "imagesUnlabeled", ".nii.gz") == {"PANCREAS_0003"}  # CT without label
    assert not list(out.rglob("PANCREAS_0003.nii.gz"))
    for case in ("PANCREAS_0001", "PANCREAS_0002"):
        volume, structure, _ = made[case]
        image, image_array = read(out / "imagesTr" / f"{case}_0000.nii.gz")
        label, label_array = read(out / "labelsTr" / f"{case}.nii.gz")
        # the label marks exactly the bright structure of the CT
        assert label_array.sum() == structure.sum()
        assert image_array[label_array == 1].min() >= 300 and image_array[label_array == 0].max() < 0
        # and both sit where the scanner put them: slices in position order, geometry of the series
        assert np.array_equal(image_array, volume) and np.array_equal(label_array, structure)
        assert np.allclose(image.GetOrigin(), ORIGIN) and np.allclose(image.GetSpacing(), SPACING)
        assert np.allclose(label.GetOrigin(), ORIGIN) and np.allclose(label.GetDirection(), np.eye(3).ravel())
    rec = record(out)
    assert rec["extra_unlabeled"] == ["PANCREAS_0003"] and rec["labeled"] == ["PANCREAS_0001", "PANCREAS_0002"]
    assert snapshot(src) == before


def test_pancreas_no_extra_unlabeled_and_lists(pancreas, tmp_path):
    src, _ = pancreas
    (src / "train.list").write_text("PANCREAS_0002\nPANCREAS_0001\n")
    out = convert("pancreas", src, "-d", 61, "--labeled", 1, "--no-extra-unlabeled", "-o", tmp_path / "raw")
    assert case_ids(out / "imagesTr", ".nii.gz") == {"PANCREAS_0002"}
    assert case_ids(out / "imagesUnlabeled", ".nii.gz") == {"PANCREAS_0001"}
    (src / "test.list").write_text("PANCREAS_0004\n")  # a label without its CT
    with pytest.raises(ConversionError, match="PANCREAS_0004 \\(label but no CT folder"):
        convert("pancreas", src, "-d", 62, "--labeled", 1, "-o", tmp_path / "raw")


def slice_files(series):
    return sorted(series.glob("*.dcm"))


def break_case(src, made, problem):
    """Break PANCREAS_0002 as `problem` says; returns the path the error must name."""
    volume, structure, series = made["PANCREAS_0002"]
    label = src / LABELS / "label0002.nii.gz"
    if problem == "duplicate slice":
        shutil.copy(slice_files(series)[0], series / "1-999.dcm")
        return series / "1-999.dcm"
    if problem == "missing slice":
        middle = next(f for f in slice_files(series) if f.name == f"1-{name_order(2)[4] + 1:03d}.dcm")
        middle.unlink()
        return series
    if problem == "unreadable dcm":
        (series / "1-000.dcm").write_bytes(b"DICM but not really")
        return series / "1-000.dcm"
    if problem == "second series":
        other = series.parent / "other-series"
        write_dicom_series(other, volume, SPACING, (0.0, 0.0, 0.0), list(range(SHAPE[0])))
        return series.parent.parent
    if problem == "label shifted":
        write_nifti(label, structure, SPACING, (ORIGIN[0] + 10, ORIGIN[1], ORIGIN[2]))
    elif problem == "label value 2":
        write_nifti(label, structure * 2, SPACING, ORIGIN)
    return label


BAD = {"duplicate slice": "same slice position", "missing slice": "uneven slice spacing",
       "unreadable dcm": "cannot read DICOM header", "second series": "2 DICOM series",
       "label shifted": "geometry differs from the image.*not a reorientation",
       "label value 2": "unexpected label values 2"}


@pytest.mark.parametrize("problem", sorted(BAD))
def test_pancreas_bad_inputs(pancreas, tmp_path, problem):
    src, made = pancreas
    named = break_case(src, made, problem)
    with pytest.raises(ConversionError, match=BAD[problem]) as error:
        convert("pancreas", src, "-d", 63, "-o", tmp_path / "raw")
    assert str(named) in str(error.value) and leftovers(tmp_path / "raw") == []


def test_pancreas_label_with_broken_header_needs_voxel_mode(pancreas, tmp_path):
    src, made = pancreas
    write_nifti(src / LABELS / "label0002.nii.gz", made["PANCREAS_0002"][1])  # spacing 1, origin 0
    with pytest.raises(ConversionError, match="--label-geometry voxel"):
        convert("pancreas", src, "-d", 64, "-o", tmp_path / "raw")
    out = convert("pancreas", src, "-d", 64, "--label-geometry", "voxel", "-o", tmp_path / "raw")
    _, label_array = read(out / "labelsTr" / "PANCREAS_0002.nii.gz")
    assert np.array_equal(label_array, made["PANCREAS_0002"][1])


def test_pancreas_h5_with_literature_lists(tmp_path):
    src = tmp_path / "Pancreas"
    rng = np.random.default_rng(3)
    made = {}
    for number in range(1, 6):
        image = rng.normal(size=(9, 8, 6 + number)).astype(np.float32)
        label = (image > 1).astype(np.uint8)
        write_h5(src / "Pancreas_h5" / f"image{number:04d}_norm.h5", image, label)
        made[f"PANCREAS_{number:04d}"] = (image, label)
    (src / "train.list").write_text("image0004_norm\nimage0002_norm.h5\nimage0005_norm\n")
    (src / "test.list").write_text("PANCREAS_0001\n")
    out = convert("pancreas", src, "-d", 65, "--labeled", 2, "-o", tmp_path / "raw")
    rec = record(out)
    assert rec["labeled"] == ["PANCREAS_0004", "PANCREAS_0002"] and rec["unlabeled"] == ["PANCREAS_0005"]
    assert rec["test"] == ["PANCREAS_0001"] and rec["not_used"] == ["PANCREAS_0003"]
    image, array = read(out / "imagesTr" / "PANCREAS_0004_0000.nii.gz")
    assert np.allclose(image.GetSpacing(), 1.0)
    assert np.array_equal(array, np.transpose(made["PANCREAS_0004"][0], (2, 1, 0)))
