"""The PH2 and LA converters on the real files in ../shared/data (or $NNUNET_SSL_SHARED_DATA), checked with
nnU-Net's own dataset integrity check. Skipped where that folder is absent; the data is never copied here."""
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from nnunet_ssl.dataset_conversion.core import ConversionError
from test_conversion_fixtures import case_ids, convert, dataset_json, png, record

SHARED = Path(os.environ.get("NNUNET_SSL_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
PH2_IDS, LA_IDS = 501, 502


def source(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real data not here: {path} (set NNUNET_SSL_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return tmp_path_factory.mktemp("real") / "raw"


@pytest.fixture(scope="module")
def ph2(raw):
    return convert("ph2", source("PH2"), "-d", PH2_IDS, "--labeled", 4, "--max-size", 128, "-np", 2, "-o", raw)


@pytest.fixture(scope="module")
def la(raw):
    return convert("la", source("LA"), "-d", LA_IDS, "--labeled", 4, "--skip-missing", "-np", 2, "-o", raw)


def test_real_ph2(ph2):
    cases = sorted(p.name for p in (source("PH2") / "PH2 Dataset images").iterdir() if p.is_dir())
    assert case_ids(ph2 / "imagesTr", ".png") | case_ids(ph2 / "imagesUnlabeled", ".png") == set(cases)
    assert dataset_json(ph2)["numTraining"] == 4 and len(record(ph2)["unlabeled"]) == len(cases) - 4
    for label in (ph2 / "labelsTr").iterdir():
        values = png(label)
        assert set(np.unique(values)) == {0, 1} and max(values.shape) == 128
    assert all(max(png(p).shape[:2]) == 128 for p in (ph2 / "imagesUnlabeled").iterdir())


def test_real_ph2_rgb_mask_reads_like_the_1bit_ones(tmp_path):
    images = source("PH2") / "PH2 Dataset images"
    rgb = [c.name for c in sorted(images.iterdir()) if Image.open(c / f"{c.name}_lesion" /
                                                                  f"{c.name}_lesion.bmp").mode != "1"]
    if not rgb:
        pytest.skip("no 24-bit lesion mask in this copy of PH2")
    (tmp_path / "train.list").write_text("\n".join(rgb))
    out = convert("ph2", source("PH2"), "-d", 503, "--train-list", tmp_path / "train.list", "-o", tmp_path / "raw")
    for case in rgb:
        source_mask = np.asarray(Image.open(images / case / f"{case}_lesion" / f"{case}_lesion.bmp").convert("L"))
        assert np.array_equal(png(out / "labelsTr" / f"{case}.png"), (source_mask > 127).astype(np.uint8))


def test_real_la_absent_cases_are_named(tmp_path):
    la_src = source("LA")
    listed = (la_src / "train.list").read_text().split() + (la_src / "test.list").read_text().split()
    present = {p.name for p in (la_src / "2018LA_Seg_Training Set").iterdir() if p.is_dir()}
    absent = [i for i in listed if i not in present]
    with pytest.raises(ConversionError, match="--skip-missing") as error:
        convert("la", la_src, "-d", 504, "--labeled", 4, "-o", tmp_path / "raw")
    assert all(i in str(error.value) for i in absent[:8]) and str(la_src / "test.list") in str(error.value)


def test_real_la(la):
    la_src = source("LA")
    train = [i for i in (la_src / "train.list").read_text().split()
             if (la_src / "2018LA_Seg_Training Set" / i).is_dir()]
    rec = record(la)
    assert rec["labeled"] == train[:4] and rec["unlabeled"] == train[4:]
    case = train[0]
    import h5py
    with h5py.File(la_src / "2018LA_Seg_Training Set" / case / "mri_norm2.h5") as f:
        image, label = f["image"][()], f["label"][()]
    written = nib.load(str(la / "imagesTr" / f"{case}_0000.nii.gz"))
    assert np.array_equal(np.asarray(written.dataobj), image) and np.allclose(written.header.get_zooms(), 0.625)
    assert np.array_equal(np.asarray(nib.load(str(la / "labelsTr" / f"{case}.nii.gz")).dataobj), label)


def test_real_datasets_pass_nnunet_integrity_check(raw, request):
    ids = []
    for name, fixture, dataset_id in (("PH2", "ph2", PH2_IDS), ("LA", "la", LA_IDS)):
        if (SHARED / name).is_dir():
            request.getfixturevalue(fixture)
            ids.append(str(dataset_id))
    if not ids:
        pytest.skip(f"real data not here: {SHARED}")
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(raw.parent / "preprocessed"),
           "nnUNet_results": str(raw.parent / "results"), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f"}
    r = subprocess.run(["nnUNetv2_extract_fingerprint", "-d", *ids, "-np", "2", "--verify_dataset_integrity"],
                       capture_output=True, encoding="utf-8", errors="replace", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("verify_dataset_integrity Done") == len(ids) and "mismatch" not in r.stdout
    for dataset in raw.iterdir():
        assert (raw.parent / "preprocessed" / dataset.name / "dataset_fingerprint.json").is_file()
