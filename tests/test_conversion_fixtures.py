"""Helpers for the converter tests: tiny sources written in each dataset's real layout and file formats, and
small readers for the converted datasets. (No tests here; the test_conversion_* modules import it.)"""
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from nnunet_ssl.dataset_conversion.cli import main as convert_main


def convert(*argv) -> Path:
    """`nnunet_ssl convert ...` in this process; one worker unless the test asks for more (a spawned pool costs
    more than it saves on a handful of tiny cases)."""
    argv = [str(a) for a in argv]
    return Path(convert_main(argv if "-np" in argv else argv + ["-np", "1"]))


def snapshot(root) -> dict:
    """Every file under `root` with its content hash and mtime: the source must come out unchanged."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (hashlib.sha1(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


def leftovers(output_root) -> list:
    """What a failed run must not leave behind: any entry of the output root."""
    return sorted(os.listdir(output_root)) if os.path.isdir(output_root) else []


def record(dataset: Path) -> dict:
    return json.loads((dataset / "ssl_split.json").read_text())


def dataset_json(dataset: Path) -> dict:
    return json.loads((dataset / "dataset.json").read_text())


def case_ids(folder: Path, ending: str) -> set:
    """Case ids in an nnU-Net folder (the channel suffix `_0000` of image files dropped)."""
    if not folder.is_dir():
        return set()
    names = [n[: -len(ending)] for n in os.listdir(folder) if n.endswith(ending)]
    if not folder.name.startswith("images"):  # label file names carry no channel suffix
        return set(names)
    assert all(n[-5:-4] == "_" and n[-4:].isdigit() for n in names), names
    return {n[:-5] for n in names}


def seeded(ids, seed=0) -> list:
    """The documented seeded order, derived independently of the code under test."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    return order


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


# ---------------------------------------------------------------------------------------------------- 2D


def lesion_image(rng, width, height) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def lesion_mask(rng, width, height) -> np.ndarray:
    """0/1 mask with a rectangle at a random place (never empty, never full)."""
    mask = np.zeros((height, width), np.uint8)
    x0, y0 = rng.integers(1, width // 2), rng.integers(1, height // 2)
    mask[y0:y0 + height // 3, x0:x0 + width // 3] = 1
    return mask


# the challenge downloads' folder names: (image folder template, ground-truth folder template, subsets)
ISIC_NAMES = {2016: ("ISBI2016_ISIC_Part1_{}_Data", "ISBI2016_ISIC_Part1_{}_GroundTruth", ("Training", "Test")),
              2017: ("ISIC-2017_{}_Data", "ISIC-2017_{}_Part1_GroundTruth", ("Training", "Validation", "Test_v2")),
              2018: ("ISIC2018_Task1-2_{}_Input", "ISIC2018_Task1_{}_GroundTruth", ("Training", "Validation", "Test"))}
ISIC_FOLDERS = {year: {subset.split("_")[0].lower(): (data.format(subset), gt.format(subset)) for subset in subsets}
                for year, (data, gt, subsets) in ISIC_NAMES.items()}


def make_isic(root: Path, year: int, sizes=None, ground_truth=("training", "validation", "test"), seed=0):
    """ISIC challenge folders: JPEG images, 0/255 PNG masks (2016: `_Segmentation.png`), plus the stray files of
    the real downloads (2017 superpixels and metadata CSV, 2018 ATTRIBUTION/LICENSE). Returns
    {role: {case_id: (image array as decoded, mask 0/1)}}."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"training": 6, "validation": 2, "test": 3}
    suffix = "_Segmentation.png" if year == 2016 else "_segmentation.png"
    made, number = {}, 0
    for role, (data_folder, gt_folder) in ISIC_FOLDERS[year].items():
        made[role] = {}
        data = root / data_folder
        data.mkdir(parents=True)
        for _ in range(sizes.get(role, 0)):
            case = f"ISIC_{number:07d}"
            number += 1
            width, height = int(rng.integers(30, 50)), int(rng.integers(24, 40))
            Image.fromarray(lesion_image(rng, width, height)).save(data / f"{case}.jpg", quality=95)
            mask = lesion_mask(rng, width, height)
            if role in ground_truth:
                (root / gt_folder).mkdir(exist_ok=True)
                Image.fromarray(mask * 255).save(root / gt_folder / f"{case}{suffix}")
            if year == 2017:
                Image.fromarray(lesion_image(rng, width, height)).save(data / f"{case}_superpixels.png")
            made[role][case] = (png(data / f"{case}.jpg"), mask)
        if year == 2017:
            (data / f"{data_folder}_metadata.csv").write_text("image_id,age_approximate,sex\n")
        if year == 2018:
            (data / "ATTRIBUTION.txt").write_text("attribution")
            (data / "LICENSE.txt").write_text("license")
    return made


def make_ph2(root: Path, n=6, seed=0):
    """PH2 as distributed: BMP images, lesion masks as 1-bit BMP (Pillow mode "1") except one 24-bit RGB 0/255
    BMP, a lossy JPEG copy of each mask that must not be used, roi/ colour masks, the txt files.
    Returns {case_id: (image, mask 0/1)}."""
    rng = np.random.default_rng(seed)
    images = root / "PH2 Dataset images"
    made = {}
    for i in range(n):
        case = f"IMD{2 + 3 * i:03d}"
        width, height = int(rng.integers(40, 60)), int(rng.integers(30, 45))
        image, mask = lesion_image(rng, width, height), lesion_mask(rng, width, height)
        folder = images / case
        for sub in ("_Dermoscopic_Image", "_lesion", "_roi"):
            (folder / f"{case}{sub}").mkdir(parents=True)
        Image.fromarray(image).save(folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp")
        lesion = folder / f"{case}_lesion" / f"{case}_lesion.bmp"
        if i == 1:
            Image.fromarray(np.repeat(mask[..., None] * 255, 3, axis=2)).save(lesion)  # the 24-bit RGB one
        else:
            Image.fromarray(mask * 255).convert("1").save(lesion)
        Image.fromarray(np.full_like(mask, 255)).save(folder / f"{case}_lesion" / f"{case}_lesion.jpg")
        Image.fromarray(mask * 255).convert("1").save(folder / f"{case}_roi" / f"{case}_R1_Label4.bmp")
        made[case] = (image, mask)
    (root / "PH2_dataset.txt").write_text("Name\tClinical Diagnosis\n")
    (root / "Readme.txt").write_text("PH2 readme\n")
    return made


# ---------------------------------------------------------------------------------------------------- 3D


def write_nifti(path: Path, array_zyx: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def box(shape_zyx, z, y, x, dtype=np.uint8, value=1) -> np.ndarray:
    """Zero array with `value` in the slices z, y, x (tuples of start, stop)."""
    out = np.zeros(shape_zyx, dtype)
    out[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = value
    return out


def write_h5(path: Path, image_xyz, label_xyz=None):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image_xyz, compression="gzip")
        if label_xyz is not None:
            f.create_dataset("label", data=label_xyz, compression="gzip")


def write_dicom_series(folder: Path, volume_zyx: np.ndarray, spacing, origin, name_order):
    """One CT series, one file per slice, with the per-slice tags a scanner writes (ImagePositionPatient
    0020|0032, InstanceNumber 0020|0013, ...). Slice z is written as file `name_order[z]`, so file-name order
    differs from position order."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(volume_zyx.astype(np.int16))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    series_uid = "1.2.826.0.1.3680043.2.1125.7." + str(abs(hash(str(folder))) % 10 ** 8)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume_zyx.shape[0]):
        image_slice = volume[:, :, z]
        tags = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0020|000d": series_uid + ".1",
                "0020|000e": series_uid, "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(name_order[z] + 1),
                "0020|0032": "\\".join(str(v) for v in volume.TransformIndexToPhysicalPoint((0, 0, z))),
                "0008|0018": f"{series_uid}.2.{z}", "0028|0030": f"{spacing[1]}\\{spacing[0]}",
                "0018|0050": str(spacing[2])}
        for key, value in tags.items():
            image_slice.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"1-{name_order[z] + 1:03d}.dcm"))
        writer.Execute(image_slice)
