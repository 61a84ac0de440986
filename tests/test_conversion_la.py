"""LA converter: the literature's HDF5 version (with train.list / test.list next to it) and the raw NRRD
release, on small sources in those layouts, with absent listed cases, stray files and bad inputs."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.dataset_conversion.core import ConversionError
from test_conversion_fixtures import (box, case_ids, convert, dataset_json, leftovers, record, snapshot, write_h5,
                                      write_nifti)

H5_ROOT = "2018LA_Seg_Training Set"


def la_ids(n):
    return [f"{i:02d}LA{chr(65 + i) * 3}X" for i in range(n)]


def make_la_h5(root, ids, train, test):
    """Cases in `ids` get a folder with mri_norm2.h5 (x, y, z arrays of odd sizes, so a wrong transpose shows);
    the lists may name cases that have no folder."""
    rng = np.random.default_rng(1)
    made = {}
    for i, case in enumerate(ids):
        shape = (13 + i, 11, 7)
        image = rng.normal(size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[2:9, 3 + i % 3:8, 1:5] = 1
        write_h5(root / H5_ROOT / case / "mri_norm2.h5", image, label)
        made[case] = (image, label)
    (root / "train.list").write_text("\n".join(train) + "\n")
    (root / "test.list").write_text("\n".join(test) + "\n")
    (root / H5_ROOT / "desktop.ini").write_text("[.ShellClassInfo]")
    return made


@pytest.fixture
def la_h5(tmp_path):
    ids = la_ids(7)
    train, test = [ids[i] for i in (4, 0, 3, 1, 2)], [ids[5], ids[6]]  # list order is not sorted order
    src = tmp_path / "LA"
    return src, make_la_h5(src, ids, train, test), train, test


def nifti_xyz(path):
    """Read with nibabel: its arrays are (x, y, z), like the HDF5 ones, independent of SimpleITK's order."""
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.header.get_zooms()


def test_la_h5_lists_found_first_n_labeled_arrays_exact(la_h5, tmp_path):
    src, made, train, test = la_h5
    before = snapshot(src)
    out = convert("la", src, "-d", 50, "--labeled", 2, "-o", tmp_path / "raw")
    assert case_ids(out / "imagesTr", ".nii.gz") == set(train[:2]) == case_ids(out / "labelsTr", ".nii.gz")
    assert case_ids(out / "imagesUnlabeled", ".nii.gz") == set(train[2:])
    assert case_ids(out / "imagesTs", ".nii.gz") == set(test) == case_ids(out / "labelsTs", ".nii.gz")
    for case in train[:2]:
        image, zooms = nifti_xyz(out / "imagesTr" / f"{case}_0000.nii.gz")
        label, label_zooms = nifti_xyz(out / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(image, made[case][0]) and np.array_equal(label, made[case][1])
        assert np.allclose(zooms, 0.625) and np.allclose(label_zooms, 0.625)
    rec = record(out)
    assert rec["labeled"] == train[:2] and rec["test"] == test
    assert rec["list_files"]["train"]["path"] == str(src / "train.list")
    assert dataset_json(out)["numTraining"] == 2 and snapshot(src) == before


def test_la_listed_but_absent_cases(tmp_path):
    ids = la_ids(4)
    src = tmp_path / "LA"
    absent = ["ABSENT0000000000001", "ABSENT0000000000002"]
    make_la_h5(src, ids, train=ids[:3] + absent[:1], test=[ids[3], absent[1]])
    with pytest.raises(ConversionError) as error:
        convert("la", src, "-d", 51, "--labeled", 2, "-o", tmp_path / "raw")
    message = str(error.value)
    assert all(a in message for a in absent) and "--skip-missing" in message
    assert str(src / "train.list") in message and "1 of 4 absent" in message and "1 of 2 absent" in message
    assert leftovers(tmp_path / "raw") == []
    out = convert("la", src, "-d", 51, "--labeled", 2, "--skip-missing", "-o", tmp_path / "raw")
    rec = record(out)
    assert rec["missing"] == {"train": absent[:1], "test": absent[1:]}
    assert rec["labeled"] == ids[:2] and rec["unlabeled"] == [ids[2]] and rec["test"] == [ids[3]]


def test_la_case_folder_without_h5_is_reported_as_absent(la_h5, tmp_path):
    src, made, train, _ = la_h5
    (src / H5_ROOT / train[0] / "mri_norm2.h5").unlink()
    (src / H5_ROOT / train[0] / "desktop.ini").write_text("x")
    with pytest.raises(ConversionError, match=f"{train[0]} \\(folder has no mri_norm2.h5\\)"):
        convert("la", src, "-d", 52, "-o", tmp_path / "raw")


@pytest.mark.parametrize("problem, expected", [
    ("label value 2", "unexpected label values 2"), ("label shape", "size mismatch: label"),
    ("no label dataset", "no dataset 'label'"), ("not hdf5", "cannot read HDF5"), ("nan", "NaN")])
def test_la_h5_bad_cases(la_h5, tmp_path, problem, expected):
    src, made, train, _ = la_h5
    path = src / H5_ROOT / train[1] / "mri_norm2.h5"
    image, label = made[train[1]]
    if problem == "label value 2":
        write_h5(path, image, label * 2)
    elif problem == "label shape":
        write_h5(path, image, label[:-1])
    elif problem == "no label dataset":
        write_h5(path, image)
    elif problem == "not hdf5":
        path.write_bytes(b"\x89HDF garbage")
    else:
        image = image.copy()
        image[0, 0, 0] = np.nan
        write_h5(path, image, label)
    with pytest.raises(ConversionError, match=expected) as error:
        convert("la", src, "-d", 53, "-o", tmp_path / "raw")
    assert str(path) in str(error.value) and leftovers(tmp_path / "raw") == []


def make_la_raw(root, ids):
    """Raw release: Training Set/<ID>/lgemri.nrrd + laendo.nrrd (0/255), desktop.ini files around."""
    made = {}
    spacing, origin = (0.625, 0.625, 1.25), (-40.0, 12.5, 3.0)
    for i, case in enumerate(ids):
        shape = (6, 10, 12 + i)
        image = np.random.default_rng(i).integers(0, 255, shape).astype(np.uint8)
        label = box(shape, (1, 4), (2, 7), (3, 9), value=255)
        folder = root / "Training Set" / case
        write_nifti(folder / "lgemri.nrrd", image, spacing, origin)
        write_nifti(folder / "laendo.nrrd", label, spacing, origin)
        (folder / "desktop.ini").write_text("[.ShellClassInfo]")
        made[case] = (image, label)
    (root / "Training Set" / "desktop.ini").write_text("[.ShellClassInfo]")
    return made, spacing, origin


def test_la_raw_nrrd_geometry_and_labels(tmp_path):
    ids = la_ids(3)
    made, spacing, origin = make_la_raw(tmp_path / "LA raw", ids)
    (tmp_path / "train.list").write_text("\n".join(ids[::-1]))
    out = convert("la", tmp_path / "LA raw", "-d", 54, "--labeled", 1, "--train-list", tmp_path / "train.list",
                  "-o", tmp_path / "raw")
    case = ids[-1]
    assert case_ids(out / "labelsTr", ".nii.gz") == {case}
    image = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
    label = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
    for written in (image, label):
        assert np.allclose(written.GetSpacing(), spacing) and np.allclose(written.GetOrigin(), origin)
    assert np.array_equal(sitk.GetArrayFromImage(image), made[case][0])
    assert np.array_equal(sitk.GetArrayFromImage(label), made[case][1] // 255)
    assert case_ids(out / "imagesUnlabeled", ".nii.gz") == set(ids[:-1])


@pytest.mark.parametrize("problem, expected", [
    ("spacing", "geometry differs from the image"), ("value 1", "unexpected label values 1 \\(expected 0, 255\\)"),
    ("no laendo", "missing label"), ("empty image", "cannot read")])
def test_la_raw_bad_cases(tmp_path, problem, expected):
    ids = la_ids(2)
    made, spacing, origin = make_la_raw(tmp_path / "LA raw", ids)
    folder = tmp_path / "LA raw" / "Training Set" / ids[1]
    broken = folder / "laendo.nrrd"
    if problem == "spacing":
        write_nifti(broken, made[ids[1]][1], (0.7, 0.625, 1.25), origin)
    elif problem == "value 1":
        write_nifti(broken, made[ids[1]][1] // 255, spacing, origin)
    elif problem == "no laendo":
        broken.unlink()
    else:
        broken = folder / "lgemri.nrrd"
        broken.write_bytes(b"")
    with pytest.raises(ConversionError, match=expected) as error:
        convert("la", tmp_path / "LA raw", "-d", 55, "-o", tmp_path / "raw")
    assert str(broken) in str(error.value) and leftovers(tmp_path / "raw") == []
