"""Shared core of the dataset converters (`nnunet_ssl convert <dataset> SRC -d ID ...`).

A converter module (isic, ph2, la, pancreas, brats, flare) only *discovers* its source: it returns a
`ConversionPlan` (each case with its source files, the default training / validation / test roles, the
labels, and the writer function that turns one case into nnU-Net files). The rest is shared and lives here:

* the semi-supervised split (`make_split`). With a training list (`--train-list`, or a list file the
  converter finds itself, e.g. LA's `train.list`) the labeled cases are the first N of that list, in list
  order (the convention of UA-MT, BCP and SGRS-Net). Without one, the training case ids are sorted and
  shuffled with `random.Random(seed).shuffle` (`--seed`, default 0) and the first N of that order are the
  labeled ones. The rest of the training cases form the unlabeled pool (their labels are never written);
* writers: 2D RGB PNG (`write_rgb_case`), 3D NIfTI from NIfTI / NRRD / DICOM series (`write_volume_case`)
  and from HDF5 (`write_h5_case`), with label remapping and image/label checks;
* running the cases in worker processes (`-np`) with a progress bar, and `--skip-bad`;
* the atomic write: everything is built in a hidden temporary folder next to the target, which replaces
  the target only when complete. A failed run leaves nothing behind; the source is only ever read;
* the split record `ssl_split.json` in the dataset folder.

Every problem with a source file raises `ConversionError` naming the file and what is wrong.
"""
import hashlib
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from nnunet_ssl.utilities.atomic import new_temp_folder, replace_folder

SPLIT_RECORD = "ssl_split.json"
NIFTI_ENDING = ".nii.gz"
PNG_ENDING = ".png"
RGB_CHANNELS = {0: "R", 1: "G", 2: "B"}
LIST_ROLES = ("train", "validation", "test")
VALIDATION_TARGETS = ("skip", "train", "test", "unlabeled")
# image/label grids that differ by less than this are the same grid (float noise in headers)
SPACING_RTOL, ORIGIN_ATOL_MM, DIRECTION_ATOL = 1e-4, 1e-3, 1e-4


class ConversionError(RuntimeError):
    """A source file, list or argument the converter cannot use; the message names it and what is wrong."""


# ----------------------------------------------------------------------------------------------------------
# What a converter module hands to the core


@dataclass(frozen=True)
class Case:
    """One case of the source. `images`: one path per channel (a DICOM series folder counts as one path).
    `label`: where its label should be (it may not exist: that is reported when a labeled case needs it)."""
    case_id: str
    images: Tuple[str, ...]
    label: Optional[str] = None


@dataclass
class ConversionPlan:
    name: str                                   # the part after DatasetXXX_
    converter: str                              # module name, for the split record
    source: str
    channel_names: Dict[int, str]
    labels: Dict[str, Union[int, Tuple[int, ...]]]
    file_ending: str
    writer: Callable                            # module-level function(case, image_stem, label_path, options)
    writer_options: dict
    cases: Dict[str, Case]                      # every case that can take a role, by id
    training: List[str]                         # default training cases
    validation: List[str] = field(default_factory=list)
    test: List[str] = field(default_factory=list)
    extra_unlabeled: List[Case] = field(default_factory=list)   # image-only sources -> imagesUnlabeled
    list_files: Dict[str, str] = field(default_factory=dict)    # role -> list file found by the converter
    training_in_order: bool = False             # True: `training` already is the labeled-first order
    split_description: Optional[str] = None     # says how `training_in_order` was made
    absent_reasons: Dict[str, str] = field(default_factory=dict)  # id -> why a folder holds no usable case
    list_entry_to_id: Callable[[str], Optional[str]] = None
    regions_class_order: Optional[Tuple[int, ...]] = None
    description: str = ""
    reference: str = ""
    notes: List[str] = field(default_factory=list)


@dataclass
class ConvertOptions:
    dataset_id: Optional[int]
    output_root: str
    name: Optional[str] = None
    labeled: Optional[int] = None
    labeled_fraction: Optional[float] = None
    seed: int = 0
    lists: Dict[str, str] = field(default_factory=dict)        # role -> list file given on the command line
    validation_to: str = "skip"
    test_fraction: Optional[float] = None
    skip_missing: bool = False
    skip_bad: bool = False
    num_processes: int = 1
    overwrite: bool = False
    arguments: dict = field(default_factory=dict)   # what the split record stores (re-run detection)
    command: str = ""


# ----------------------------------------------------------------------------------------------------------
# Finding things in a source tree


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise ConversionError(f"{path}: {what} does not exist (or is not a folder)")
    return path


def subdirs(folder: str) -> List[str]:
    """Sorted names of the sub-folders (hidden ones and macOS `__MACOSX` left out)."""
    return sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))
                  and not n.startswith(".") and n != "__MACOSX")


def files_matching(folder: str, pattern: str) -> List[str]:
    """Sorted names of the files in `folder` whose whole name matches `pattern` (case-insensitive); stray files
    (desktop.ini, CSVs, *_superpixels.png, ...) simply do not match."""
    regex = re.compile(pattern, re.IGNORECASE)
    return sorted(n for n in os.listdir(folder) if regex.fullmatch(n) and os.path.isfile(os.path.join(folder, n)))


def find_named_folder(root: str, pattern: str, max_depth: int = 2) -> Optional[str]:
    """The folder under `root` (root itself included, down to `max_depth` levels) whose name fully matches
    `pattern` (case-insensitive): downloads are unpacked at different depths. A folder that only holds one
    folder of the same name (a zip unpacked into a folder of its own name) is entered."""
    regex = re.compile(pattern, re.IGNORECASE)
    level = [root]
    for _ in range(max_depth + 1):
        hits = [p for p in level if regex.fullmatch(os.path.basename(os.path.normpath(p)))]
        if len(hits) > 1:
            raise ConversionError(f"{root}: several folders match {pattern!r}: {', '.join(sorted(hits))}")
        if hits:
            return _enter_doubled_folder(hits[0])
        level = [os.path.join(p, n) for p in level for n in subdirs(p)]
    return None


def _enter_doubled_folder(folder: str) -> str:
    inner = subdirs(folder)
    only_file_names = [n for n in os.listdir(folder) if not n.startswith(".")]
    if len(inner) == 1 and only_file_names == inner and inner[0].lower() == os.path.basename(folder).lower():
        return os.path.join(folder, inner[0])
    return folder


def find_file_ci(folder: str, name: str) -> str:
    """`folder/name`, matching the name case-insensitively (`_Segmentation.png` vs `_segmentation.png`);
    the exact path is returned when nothing matches, so the error names what was expected."""
    exact = os.path.join(folder, name)
    if os.path.isfile(exact) or not os.path.isdir(folder):
        return exact
    lower = name.lower()
    for n in os.listdir(folder):
        if n.lower() == lower:
            return os.path.join(folder, n)
    return exact


LIST_FILE_NAMES = {"train": ("train.list", "train.txt"), "validation": ("val.list", "val.txt"),
                   "test": ("test.list", "test.txt")}


def find_split_lists(folders: Iterable[str]) -> Dict[str, str]:
    """The literature's split list files (train.list, test.list, ...) in the first of `folders` holding one."""
    found = {}
    for role, names in LIST_FILE_NAMES.items():
        for folder in folders:
            hits = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
            if hits:
                found[role] = os.path.abspath(hits[0])
                break
    return found


def strip_channel_suffix(file_name: str, ending: str) -> str:
    """`CASE_0000.nii.gz` -> `CASE` (and `CASE.nii.gz` -> `CASE`)."""
    stem = file_name[: -len(ending)] if file_name.lower().endswith(ending.lower()) else file_name
    return re.sub(r"_0000$", "", stem)


def nifti_ending_of(file_name: str) -> Optional[str]:
    lower = file_name.lower()
    for ending in (".nii.gz", ".nii"):
        if lower.endswith(ending):
            return ending
    return None


# ----------------------------------------------------------------------------------------------------------
# Case lists and the semi-supervised split


def default_list_entry_to_id(entry: str) -> Optional[str]:
    """`ID`, `ID/mri_norm2.h5` or `some/dir/ID/file.h5` -> `ID`."""
    parts = [p for p in entry.replace("\\", "/").split("/") if p]
    if len(parts) > 1 and "." in parts[-1]:
        parts = parts[:-1]
    return parts[-1] if parts else None


def read_case_list(path: str, entry_to_id: Optional[Callable[[str], Optional[str]]] = None) -> List[str]:
    entry_to_id = entry_to_id or default_list_entry_to_id
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: cannot read the case list ({e})") from None
    ids = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        case_id = entry_to_id(entry)
        if not case_id:
            raise ConversionError(f"{path}, line {number}: no case id in {entry!r}")
        ids.append(case_id)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConversionError(f"{path}: cases listed twice: {', '.join(duplicates)}")
    if not ids:
        raise ConversionError(f"{path}: the case list is empty")
    return ids


def seeded_order(case_ids: Iterable[str], seed: int) -> List[str]:
    """The documented seeded shuffle: sorted ids, then `random.Random(seed).shuffle`."""
    order = sorted(case_ids)
    random.Random(seed).shuffle(order)
    return order


def count_from_fraction(fraction: float, total: int, what: str) -> int:
    if not 0 < fraction <= 1:
        raise ConversionError(f"{what} must be in (0, 1], got {fraction}")
    return int(math.floor(fraction * total + 0.5))  # round half up: 5% of 80 = 4, 10% of 62 = 6


def labeled_count(num_training: int, opts: ConvertOptions) -> int:
    if opts.labeled is None and opts.labeled_fraction is None:
        return num_training  # fully supervised: every training case labeled
    n = opts.labeled if opts.labeled is not None else count_from_fraction(
        opts.labeled_fraction, num_training, "--labeled-fraction")
    if not 1 <= n <= num_training:
        raise ConversionError(f"--labeled{'-fraction' if opts.labeled is None else ''} gives {n} labeled cases, but "
                              f"there are {num_training} training cases (need 1..{num_training})")
    return n


@dataclass
class Split:
    labeled: List[str]
    unlabeled: List[str]
    test: List[str]
    validation: List[str]
    validation_to: str
    training_order: List[str]
    convention: str
    seed: Optional[int]
    list_files: Dict[str, str]
    missing: Dict[str, List[str]]
    labeled_absent: List[str]      # cases the labeled rule picked that are absent (--skip-missing)
    not_used: List[str]


def _roles_from_lists(plan: ConversionPlan, list_files: Dict[str, str]) -> Dict[str, List[str]]:
    roles = {"train": list(plan.training), "validation": list(plan.validation), "test": list(plan.test)}
    listed = {role: read_case_list(path, plan.list_entry_to_id) for role, path in list_files.items()}
    every_listed = {i for ids in listed.values() for i in ids}
    for role in LIST_ROLES:
        # a case named in any list keeps only the role its list gives it
        roles[role] = listed[role] if role in listed else [i for i in roles[role] if i not in every_listed]
    return roles


def _check_roles_disjoint(roles: Dict[str, List[str]], list_files: Dict[str, str]) -> None:
    for a, b in (("train", "test"), ("train", "validation"), ("validation", "test")):
        both = sorted(set(roles[a]) & set(roles[b]))
        if both:
            where = " and ".join(list_files.get(r, f"the default {r} set") for r in (a, b))
            raise ConversionError(f"cases in both the {a} and the {b} set ({where}): {', '.join(both[:10])}")


def _training_order(plan: ConversionPlan, opts: ConvertOptions, train: List[str], has_train_list: bool):
    """(training ids in labeled-first order, the convention in words)."""
    if has_train_list:
        return train, "labeled = the first N cases of the training list, in list order (UA-MT / BCP / SGRS-Net)"
    if plan.training_in_order:
        return train, plan.split_description or "labeled = the first N of the converter's training order"
    return seeded_order(train, opts.seed), (f"training ids sorted, shuffled with random.Random({opts.seed})."
                                            f"shuffle; labeled = the first N of that order")


def make_split(plan: ConversionPlan, opts: ConvertOptions) -> Split:
    if opts.validation_to not in VALIDATION_TARGETS:
        raise ConversionError(f"--validation-to must be one of {', '.join(VALIDATION_TARGETS)}")
    list_files = {**plan.list_files, **opts.lists}
    roles = _roles_from_lists(plan, list_files)
    _check_roles_disjoint(roles, list_files)
    order, convention = _training_order(plan, opts, roles["train"], "train" in list_files)
    if opts.test_fraction is not None:
        in_given_order = "train" in list_files or plan.training_in_order
        order, roles["test"] = _take_test_fraction(order, roles["test"], opts, in_given_order)
        convention += f"; test = the first {len(roles['test'])} of the shuffled order (--test-fraction)"
    if opts.validation_to == "train":
        order = order + roles["validation"]  # appended: the first N labeled stay those of the training list
    test = roles["test"] + (roles["validation"] if opts.validation_to == "test" else [])
    n = labeled_count(len(order), opts)
    converted = {"train": order, "test": test}
    if opts.validation_to == "unlabeled":
        converted["validation"] = roles["validation"]
    missing = _missing_cases(plan, converted)
    if missing and not opts.skip_missing:
        raise ConversionError(_missing_message(plan, missing, list_files, converted))
    present = lambda ids: [i for i in ids if i in plan.cases]  # noqa: E731
    return Split(labeled=present(order[:n]), unlabeled=present(order[n:]), test=present(test),
                 validation=present(roles["validation"]), validation_to=opts.validation_to,
                 training_order=order, convention=convention, seed=None if "train" in list_files else opts.seed,
                 list_files=list_files, missing=missing, labeled_absent=[i for i in order[:n] if i not in plan.cases],
                 not_used=sorted(set(plan.cases) - set(order) - set(test) - set(roles["validation"])))


def _take_test_fraction(order, test, opts, in_given_order):
    if test:
        raise ConversionError("--test-fraction: this source already has a test set (leave --test-fraction out, "
                              "or give --test-list)")
    if in_given_order:
        raise ConversionError("--test-fraction cannot be combined with a training list: give --test-list")
    n_test = count_from_fraction(opts.test_fraction, len(order), "--test-fraction")
    if not 1 <= n_test < len(order):
        raise ConversionError(f"--test-fraction {opts.test_fraction} gives {n_test} test cases of {len(order)}")
    return order[n_test:], order[:n_test]


def _missing_cases(plan: ConversionPlan, roles: Dict[str, List[str]]) -> Dict[str, List[str]]:
    missing = {role: [i for i in ids if i not in plan.cases] for role, ids in roles.items()}
    return {role: ids for role, ids in missing.items() if ids}


def _missing_message(plan, missing, list_files, roles) -> str:
    lines = [f"listed cases are absent from {plan.source}:"]
    for role, ids in missing.items():
        origin = list_files.get(role, f"the {role} set")
        shown = ", ".join(f"{i} ({plan.absent_reasons[i]})" if i in plan.absent_reasons else i for i in ids[:8])
        more = f", ... ({len(ids) - 8} more)" if len(ids) > 8 else ""
        lines.append(f"  {origin}: {len(ids)} of {len(roles[role])} absent: {shown}{more}")
    lines.append("Add --skip-missing to convert only the present cases (the split record then lists the absent "
                 "ones; the labeled cases stay the first N of the list, absent ones left out).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Labels


def remap_labels(values: np.ndarray, mapping: Dict[int, int], path: str) -> np.ndarray:
    """Source label values -> consecutive nnU-Net labels; any value not in `mapping` is an error."""
    found = np.unique(values)
    unexpected = [v for v in found.tolist() if v not in mapping]
    if unexpected:
        shown = ", ".join(str(v) for v in unexpected[:10])
        raise ConversionError(f"{path}: unexpected label values {shown} (expected "
                              f"{', '.join(str(k) for k in sorted(mapping))})")
    out = np.zeros(values.shape, dtype=np.uint8)
    for source_value, target_value in mapping.items():
        if target_value:
            out[values == source_value] = target_value
    return out


def check_consecutive_labels(labels: Dict[str, Union[int, Tuple[int, ...]]]) -> None:
    """nnU-Net wants background 0 and labels 1..K without gaps (region entries are tuples of those)."""
    values = set()
    for v in labels.values():
        values.update(v if isinstance(v, (tuple, list)) else (v,))
    if labels.get("background") != 0 or sorted(values) != list(range(len(values))):
        raise ConversionError(f"internal: labels {labels} are not background 0 and consecutive integers")


# ----------------------------------------------------------------------------------------------------------
# 2D RGB writer (ISIC, PH2)


def load_rgb_image(path: str):
    from PIL import Image

    if not os.path.isfile(path):
        raise ConversionError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConversionError(f"{path}: cannot read image ({e})") from None


def load_binary_mask(path: str, image_path: str) -> np.ndarray:
    """A lesion mask -> uint8 0/1. 1-bit masks (Pillow mode "1") hold 0/1; 8-bit grey or RGB masks must hold
    only 0 and 255 (RGB ones with the three channels equal); anything else is an error, never a guess."""
    from PIL import Image

    if not os.path.isfile(path):
        raise ConversionError(f"{path}: missing mask for image {image_path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "1":
                return np.asarray(im, dtype=np.uint8)
            if im.mode not in ("L", "LA", "P", "RGB", "RGBA"):
                raise ConversionError(f"{path}: unsupported mask pixel format {im.mode!r} (expected 1-bit, 8-bit "
                                      f"grey or RGB with values 0/255)")
            grey = _grey_values(np.asarray(im.convert("RGB")), path)
    except (OSError, ValueError, SyntaxError) as e:
        raise ConversionError(f"{path}: cannot read mask ({e})") from None
    return remap_labels(grey, {0: 0, 255: 1}, path)


def _grey_values(rgb: np.ndarray, path: str) -> np.ndarray:
    coloured = int(np.count_nonzero((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])))
    if coloured:
        raise ConversionError(f"{path}: colour mask ({coloured} pixels where R, G, B differ; expected a grey "
                              f"0/255 mask)")
    return rgb[..., 0]


def fitted_size(size: Tuple[int, int], max_size: Optional[int]) -> Tuple[int, int]:
    """(w, h) scaled down so that the longer side is at most `max_size` (aspect ratio kept)."""
    if not max_size or max(size) <= max_size:
        return size
    scale = max_size / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def write_rgb_case(case: Case, image_stem: str, label_path: Optional[str], options: dict) -> None:
    """One RGB image -> `<stem>_0000.png` (nnU-Net's natural-image convention: one file, channels R, G, B);
    the mask -> 0/1 PNG. `--max-size`: image resampled with Lanczos (smooth), mask with nearest neighbour, so
    no label value is invented; both to the same size, so they stay aligned."""
    from PIL import Image

    image = load_rgb_image(case.images[0])
    mask = None
    if label_path is not None:
        mask = load_binary_mask(case.label, case.images[0])
        if mask.shape[::-1] != image.size:
            raise ConversionError(f"{case.label}: size mismatch: mask is {mask.shape[1]}x{mask.shape[0]}, image "
                                  f"{case.images[0]} is {image.size[0]}x{image.size[1]}")
    size = fitted_size(image.size, options.get("max_size"))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    image.save(image_stem + "_0000" + PNG_ENDING)
    if mask is not None:
        mask_image = Image.fromarray(mask, mode="L")
        if size != mask_image.size:
            mask_image = mask_image.resize(size, Image.Resampling.NEAREST)
        mask_image.save(label_path)


# ----------------------------------------------------------------------------------------------------------
# 3D: reading volumes (NIfTI, NRRD, DICOM series, HDF5) and geometry


@dataclass(frozen=True)
class Geometry:
    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]

    @staticmethod
    def of(image_or_reader) -> "Geometry":
        return Geometry(tuple(image_or_reader.GetSize()), tuple(image_or_reader.GetSpacing()),
                        tuple(image_or_reader.GetOrigin()), tuple(image_or_reader.GetDirection()))

    def apply_to(self, image):
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def same_grid(self, other: "Geometry") -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=SPACING_RTOL, atol=0)
                and np.allclose(self.origin, other.origin, rtol=0, atol=ORIGIN_ATOL_MM)
                and np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_ATOL))

    def identical(self, other: "Geometry") -> bool:
        """What nnU-Net's integrity check compares (np.allclose with its default tolerances)."""
        return (self.size == other.size and np.allclose(self.spacing, other.spacing)
                and np.allclose(self.origin, other.origin) and np.allclose(self.direction, other.direction))

    def describe(self) -> str:
        fmt = lambda v: "(" + ", ".join(f"{x + 0.0:.4g}" for x in v) + ")"  # noqa: E731 (+0.0: no "-0")
        return (f"size {self.size}, spacing {fmt(self.spacing)}, origin {fmt(self.origin)}, "
                f"direction {fmt(self.direction)}")


def _sitk_message(e: Exception) -> str:
    """The useful line of a SimpleITK exception (they start with the C++ source location)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "sitk::ERROR" in ln] or lines[-1:]
    return useful[0].split("sitk::ERROR:")[-1].strip() if useful else type(e).__name__


def read_header(path: str) -> Geometry:
    """Geometry without reading the voxels (fast check of files that are copied as they are)."""
    import SimpleITK as sitk

    if not os.path.isfile(path):
        raise ConversionError(f"{path}: file does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ConversionError(f"{path}: cannot read ({_sitk_message(e)})") from None
    _check_3d_scalar(reader.GetDimension(), reader.GetNumberOfComponents(), path)
    return Geometry.of(reader)


def _check_3d_scalar(dimension: int, components: int, path: str) -> None:
    if dimension != 3 or components != 1:
        raise ConversionError(f"{path}: expected a 3D single-channel image, got {dimension}D with {components} "
                              f"component(s) per voxel")


def read_volume(path: str):
    """A 3D image from a file SimpleITK reads (NIfTI, NRRD, ...) or a folder holding one DICOM series."""
    import SimpleITK as sitk

    if os.path.isdir(path):
        return read_dicom_series(path)
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: file does not exist")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise ConversionError(f"{path}: cannot read ({_sitk_message(e)})") from None
    _check_3d_scalar(image.GetDimension(), image.GetNumberOfComponentsPerPixel(), path)
    return image


def _dicom_files(folder: str) -> List[str]:
    found = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if n.lower().endswith(".dcm")]
    if not found:
        raise ConversionError(f"{folder}: no DICOM (*.dcm) files in this folder or below")
    return sorted(found)


def _dicom_tags(path: str) -> Tuple[str, np.ndarray, np.ndarray]:
    """(series uid, ImagePositionPatient, ImageOrientationPatient) of one DICOM file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
        series = reader.GetMetaData("0020|000e").strip() if reader.HasMetaDataKey("0020|000e") else ""
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        orientation = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
    except RuntimeError as e:
        raise ConversionError(f"{path}: cannot read DICOM header ({_sitk_message(e)})") from None
    except ValueError:
        raise ConversionError(f"{path}: DICOM file without a usable ImagePositionPatient (0020|0032) / "
                              f"ImageOrientationPatient (0020|0037)") from None
    if position.shape != (3,) or orientation.shape != (6,):
        raise ConversionError(f"{path}: malformed ImagePositionPatient / ImageOrientationPatient")
    return series, position, orientation


def sort_slices_by_position(files: Sequence[str]) -> List[str]:
    """DICOM slice files ordered by their position along the slice normal (ImagePositionPatient projected on
    the cross product of the ImageOrientationPatient rows), never by file name, with the checks that make a
    regular 3D grid: one series, one orientation, no duplicate position, even slice spacing."""
    tags = [(f,) + _dicom_tags(f) for f in files]
    series = sorted({t[1] for t in tags})
    if len(series) > 1:
        raise ConversionError(f"{os.path.dirname(files[0])}: {len(series)} DICOM series in one case "
                              f"({', '.join(series)}); expected one")
    orientation = tags[0][3]
    for f, _, _, o in tags:
        if not np.allclose(o, orientation, atol=1e-4):
            raise ConversionError(f"{f}: slice orientation {o.tolist()} differs from {tags[0][0]}")
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(((float(np.dot(p, normal)), f) for f, _, p, _ in tags))
    _check_slice_spacing(ordered)
    return [f for _, f in ordered]


def _check_slice_spacing(ordered: List[Tuple[float, str]]) -> None:
    if len(ordered) < 2:
        return
    gaps = np.diff([z for z, _ in ordered])
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise ConversionError(f"{ordered[i + 1][1]}: same slice position as {ordered[i][1]} (duplicate slice)")
    if np.max(np.abs(gaps - np.median(gaps))) > 0.01 * np.median(gaps) + 1e-3:
        i = int(np.argmax(np.abs(gaps - np.median(gaps))))
        raise ConversionError(f"{ordered[i + 1][1]}: uneven slice spacing ({gaps[i]:.3f} mm after "
                              f"{ordered[i][1]}, median {np.median(gaps):.3f} mm): missing slice?")


def read_dicom_series(folder: str):
    import SimpleITK as sitk

    files = sort_slices_by_position(_dicom_files(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ConversionError(f"{folder}: cannot read the DICOM series ({_sitk_message(e)})") from None
    return image


def array_xyz_to_image(array: np.ndarray, spacing: Sequence[float]):
    """An (x, y, z) array (the HDF5 convention of the SSL literature) -> SimpleITK image. GetImageFromArray
    reads numpy arrays as (z, y, x), hence the transpose. Origin 0, identity direction."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


def _grid_corners(geometry: Geometry) -> np.ndarray:
    """Physical positions of the 8 corner voxel centres, sorted (order-free comparison of two grids)."""
    size = np.array(geometry.size) - 1
    direction = np.array(geometry.direction).reshape(3, 3)
    corners = [np.array(geometry.origin) + direction @ (np.array(c) * size * np.array(geometry.spacing))
               for c in np.ndindex(2, 2, 2)]
    return np.array(sorted(map(tuple, np.round(corners, 2))))


def align_label(label, label_path: str, reference: Geometry, image_path: str, mode: str) -> np.ndarray:
    """The label's voxels on the image grid, as a (z, y, x) array.

    `strict`: the label must already share the image grid. `physical`: a label stored in another voxel order
    (axes flipped or permuted, e.g. slices top-down instead of bottom-up) is put on the image grid through the
    physical positions in both headers; only exact reorientations are accepted (same corner positions, every
    labeled voxel kept). `voxel`: the headers are ignored and the label's voxel grid is taken as the image's
    (for labels with broken headers; same size required)."""
    import SimpleITK as sitk

    geometry = Geometry.of(label)
    mismatch = f"{label_path}: geometry differs from the image {image_path}: label {geometry.describe()}; " \
               f"image {reference.describe()}"
    if geometry.same_grid(reference) or (mode == "voxel" and geometry.size == reference.size):
        return sitk.GetArrayFromImage(label)
    if mode != "physical":
        raise ConversionError(mismatch)
    if not np.allclose(_grid_corners(geometry), _grid_corners(reference), atol=0.5 * min(reference.spacing)):
        raise ConversionError(mismatch + " (not a reorientation of the same grid; if the label header is wrong "
                                         "but its voxels match the image, use --label-geometry voxel)")
    moved = sitk.Resample(label, reference.size, sitk.Transform(), sitk.sitkNearestNeighbor, reference.origin,
                          reference.spacing, reference.direction, 0, label.GetPixelID())
    before, after = sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(moved)
    if np.count_nonzero(before) != np.count_nonzero(after):
        raise ConversionError(mismatch + " (reorienting lost labeled voxels)")
    return after


def _write_image(image, path: str) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(image, path, useCompression=True)


def _write_label(values: np.ndarray, geometry: Geometry, path: str) -> None:
    import SimpleITK as sitk

    _write_image(geometry.apply_to(sitk.GetImageFromArray(values)), path)


def _write_channel(src: str, dst: str, reference: Optional[Geometry]) -> Geometry:
    """One channel. A `.nii.gz` file already on the reference grid is copied byte for byte (fast, lossless);
    anything else (NRRD, `.nii`, DICOM, float noise in the header) is read and written with the reference
    geometry, after checking it is the same grid."""
    if os.path.isfile(src) and src.lower().endswith(NIFTI_ENDING):
        header = read_header(src)
        if reference is None or header.identical(reference):
            shutil.copyfile(src, dst)
            return header
    image = read_volume(src)
    geometry = Geometry.of(image)
    if reference is not None:
        if not geometry.same_grid(reference):
            raise ConversionError(f"{src}: geometry differs from the case's first channel: {geometry.describe()}; "
                                  f"first channel {reference.describe()}")
        geometry = reference
    _write_image(geometry.apply_to(image), dst)
    return geometry


def write_volume_case(case: Case, image_stem: str, label_path: Optional[str], options: dict) -> None:
    """3D case from NIfTI / NRRD files or a DICOM series folder -> `<stem>_0000.nii.gz`, `_0001`, ... and the
    label remapped with `options["label_map"]` onto the first channel's geometry (`options["label_geometry"]`:
    strict | physical | voxel, see `align_label`)."""
    reference = None
    for channel, src in enumerate(case.images):
        reference = _write_channel(src, f"{image_stem}_{channel:04d}{NIFTI_ENDING}", reference)
    if label_path is None:
        return
    if not case.label or not os.path.isfile(case.label):
        raise ConversionError(f"{case.label}: missing label for image {case.images[0]}")
    label = read_volume(case.label)
    values = align_label(label, case.label, reference, case.images[0], options.get("label_geometry", "strict"))
    _write_label(remap_labels(values, options["label_map"], case.label), reference, label_path)


def _read_h5_dataset(h5file, key: str, path: str) -> np.ndarray:
    if key not in h5file:
        raise ConversionError(f"{path}: no dataset {key!r} in the HDF5 file (has: {', '.join(h5file.keys())})")
    array = h5file[key][()]
    if array.ndim != 3:
        raise ConversionError(f"{path}: dataset {key!r} has shape {array.shape}, expected 3D (x, y, z)")
    return array


def write_h5_case(case: Case, image_stem: str, label_path: Optional[str], options: dict) -> None:
    """The SSL literature's HDF5 case (`image` float32 and `label` uint8, axes x, y, z, no spacing stored)
    -> NIfTI with `options["spacing"]` (mm), origin 0, identity direction; image and label share it."""
    import h5py

    path = case.images[0]
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: file does not exist")
    try:
        with h5py.File(path, "r") as f:
            image = _read_h5_dataset(f, "image", path)
            label = _read_h5_dataset(f, "label", path) if label_path is not None else None
    except OSError as e:
        raise ConversionError(f"{path}: cannot read HDF5 file ({e})") from None
    if not np.all(np.isfinite(image)):
        raise ConversionError(f"{path}: the image holds NaN or infinite values")
    sitk_image = array_xyz_to_image(image.astype(np.float32), options["spacing"])
    _write_image(sitk_image, image_stem + "_0000" + NIFTI_ENDING)
    if label is not None:
        if label.shape != image.shape:
            raise ConversionError(f"{path}: size mismatch: label {label.shape} vs image {image.shape}")
        values = remap_labels(np.transpose(label, (2, 1, 0)), options["label_map"], path)
        _write_label(values, Geometry.of(sitk_image), label_path)


# ----------------------------------------------------------------------------------------------------------
# Running the cases: jobs, workers, progress bar, --skip-bad

ROLE_FOLDERS = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": ("imagesUnlabeled", None),
                "test": ("imagesTs", "labelsTs")}


@dataclass(frozen=True)
class Job:
    case: Case
    role: str              # labeled | unlabeled | test
    image_folder: str
    label_folder: Optional[str]


def _run_job(payload) -> Tuple[int, Optional[str]]:
    index, job, writer, options, ending = payload
    label_path = os.path.join(job.label_folder, job.case.case_id + ending) if job.label_folder else None
    try:
        writer(job.case, os.path.join(job.image_folder, job.case.case_id), label_path, options)
    except ConversionError as e:
        return index, str(e)
    return index, None


def run_jobs(jobs: List[Job], writer: Callable, options: dict, ending: str, num_processes: int,
             skip_bad: bool, desc: str) -> List[Tuple[Job, str]]:
    """Write every job (in `num_processes` worker processes when > 1). The first bad case stops the run with
    its ConversionError; with `skip_bad` bad cases are collected and returned instead."""
    from tqdm import tqdm

    payloads = [(i, job, writer, options, ending) for i, job in enumerate(jobs)]
    bad = []
    with tqdm(total=len(jobs), desc=desc, unit="case", file=sys.stderr) as bar:
        for index, error in _results(payloads, num_processes):
            bar.update()
            if error is None:
                continue
            if not skip_bad:
                raise ConversionError(f"case {jobs[index].case.case_id}: {error}")
            bad.append((jobs[index], error))
    return sorted(bad, key=lambda b: b[0].case.case_id)


def _results(payloads, num_processes: int):
    if num_processes <= 1 or len(payloads) <= 1:
        yield from map(_run_job, payloads)
        return
    # spawn: workers start clean (no inherited threads or locks); the writers are module-level functions
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(payloads))) as pool:
        yield from pool.imap_unordered(_run_job, payloads)


def _jobs(plan: ConversionPlan, split: Split, root: str) -> List[Job]:
    extra = list(plan.extra_unlabeled)
    if split.validation_to == "unlabeled":
        extra += [plan.cases[i] for i in split.validation]
    by_role = [("labeled", [plan.cases[i] for i in split.labeled]),
               ("unlabeled", [plan.cases[i] for i in split.unlabeled] + extra),
               ("test", [plan.cases[i] for i in split.test])]
    jobs = []
    for role, cases in by_role:
        image_folder, label_folder = ROLE_FOLDERS[role]
        jobs += [Job(c, role, os.path.join(root, image_folder), label_folder and os.path.join(root, label_folder))
                 for c in cases]
    _check_unique_ids(jobs)
    return jobs


def _check_unique_ids(jobs: List[Job]) -> None:
    seen = {}
    for job in jobs:
        if job.case.case_id in seen:
            raise ConversionError(f"case id {job.case.case_id} occurs twice: {seen[job.case.case_id]} and "
                                  f"{job.case.images[0]}")
        seen[job.case.case_id] = job.case.images[0]


# ----------------------------------------------------------------------------------------------------------
# Output folder: target checks, temporary folder, atomic replace


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"-d {dataset_id}: nnU-Net dataset ids are 1..999")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ConversionError(f"--name {name!r}: use letters, digits, '_' and '-' only")
    return f"Dataset{dataset_id:03d}_{name}"


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def check_target(output_root: str, folder_name: str, arguments: dict, overwrite: bool) -> str:
    """Refuse to clobber what this command did not make: another dataset with the same id, or a dataset of
    the same name written by hand or with other arguments (unless --overwrite). Same arguments: re-run."""
    target = os.path.join(output_root, folder_name)
    prefix = folder_name.split("_")[0] + "_"
    if os.path.isdir(output_root):
        for other in sorted(os.listdir(output_root)):
            if other.startswith(prefix) and other != folder_name and os.path.isdir(os.path.join(output_root, other)):
                raise ConversionError(f"{os.path.join(output_root, other)} already uses dataset id "
                                      f"{prefix[7:10]}: choose another -d (nnU-Net needs unique ids)")
    if os.path.exists(target) and not overwrite:
        record = read_json(os.path.join(target, SPLIT_RECORD))
        if record is None:
            raise ConversionError(f"{target} already exists and was not written by `nnunet_ssl convert` (no "
                                  f"{SPLIT_RECORD}): pass --overwrite to replace it")
        if record.get("arguments") != arguments:
            raise ConversionError(f"{target} already exists, converted with other arguments (see its "
                                  f"{SPLIT_RECORD}): pass --overwrite to replace it")
    return target


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# dataset.json and the split record


def write_dataset_json(folder: str, plan: ConversionPlan, num_training: int, dataset_name: str) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    check_consecutive_labels(plan.labels)
    generate_dataset_json(folder, channel_names=dict(plan.channel_names), labels=dict(plan.labels),
                          num_training_cases=num_training, file_ending=plan.file_ending,
                          regions_class_order=plan.regions_class_order, dataset_name=dataset_name,
                          description=plan.description or None, reference=plan.reference or None,
                          converted_by=f"nnunet_ssl convert ({plan.converter})",
                          license="see the dataset's original terms of use")


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("nnunet_ssl")
    except Exception:  # not installed as a distribution (source checkout)
        return "unknown"


def write_split_record(path: str, plan: ConversionPlan, split: Split, opts: ConvertOptions,
                       bad: List[Tuple[Job, str]], folder_name: str) -> dict:
    skipped = {job.case.case_id for job, _ in bad}
    kept = lambda ids: [i for i in ids if i not in skipped]  # noqa: E731
    extra = [c.case_id for c in plan.extra_unlabeled if c.case_id not in skipped]
    record = {
        "dataset": folder_name,
        "converter": f"nnunet_ssl.dataset_conversion.{plan.converter}",
        "nnunet_ssl_version": _package_version(),
        "source": os.path.abspath(plan.source),
        "command": opts.command,
        "arguments": opts.arguments,
        "split_convention": split.convention,
        "seed": split.seed,
        "list_files": {role: {"path": p, "sha256": sha256_of(p)} for role, p in split.list_files.items()},
        "training_order": split.training_order,
        "labeled": kept(split.labeled),
        "unlabeled": kept(split.unlabeled),
        "test": kept(split.test),
        "validation": {"cases": kept(split.validation), "written_to": split.validation_to},
        "extra_unlabeled": extra,
        "missing": split.missing,
        "skipped_bad": [{"case": job.case.case_id, "role": job.role, "error": error} for job, error in bad],
        "not_used": split.not_used,
        "notes": plan.notes,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return record


# ----------------------------------------------------------------------------------------------------------
# The conversion


def convert(plan: ConversionPlan, opts: ConvertOptions) -> str:
    """Plan + options -> `output_root/DatasetXXX_Name/`, written atomically. Returns the dataset folder."""
    folder_name = dataset_folder_name(opts.dataset_id, opts.name or plan.name)
    split = make_split(plan, opts)  # problems with the source first, then with the target
    target = check_target(opts.output_root, folder_name, opts.arguments, opts.overwrite)
    if not split.labeled:
        raise ConversionError(f"{plan.source}: no labeled case is present (labeled cases: "
                              f"{', '.join(split.training_order[:5])} ...)")
    _print_notes(plan, split, opts)
    temp = new_temp_folder(opts.output_root, folder_name)
    try:
        _prepare_folders(temp, split, plan)
        bad = run_jobs(_jobs(plan, split, temp), plan.writer, plan.writer_options, plan.file_ending,
                       opts.num_processes, opts.skip_bad, folder_name)
        num_training = len(set(split.labeled) - {job.case.case_id for job, _ in bad})
        if num_training == 0:
            raise ConversionError("every labeled case was bad (see the list above): nothing to train on")
        write_dataset_json(temp, plan, num_training, folder_name)
        record = write_split_record(os.path.join(temp, SPLIT_RECORD), plan, split, opts, bad, folder_name)
        replace_folder(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _print_summary(target, record, bad)
    return target


def _prepare_folders(root: str, split: Split, plan: ConversionPlan) -> None:
    for folder in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(root, folder))
    if split.unlabeled or plan.extra_unlabeled or (split.validation_to == "unlabeled" and split.validation):
        os.makedirs(os.path.join(root, "imagesUnlabeled"))
    if split.test:
        os.makedirs(os.path.join(root, "imagesTs"))
        os.makedirs(os.path.join(root, "labelsTs"))


def warn(message: str) -> None:
    print(f"nnunet_ssl convert: {message}", file=sys.stderr)


def _print_notes(plan: ConversionPlan, split: Split, opts: ConvertOptions) -> None:
    for note in plan.notes:
        warn(note)
    for role, path in plan.list_files.items():
        if role not in opts.lists:
            warn(f"{role} list: {path} (found next to the data)")
    for role, ids in split.missing.items():
        warn(f"--skip-missing: {len(ids)} {role} case(s) absent, left out: {', '.join(ids[:8])}"
             f"{' ...' if len(ids) > 8 else ''}")
    if split.labeled_absent:
        warn(f"labeled case(s) absent, so fewer labeled cases than asked: {', '.join(split.labeled_absent)}")
    if split.not_used:
        warn(f"{len(split.not_used)} case(s) of the source have no role (in no list, or a skipped subset) and are "
             f"not converted")
    if split.validation and split.validation_to == "skip":
        warn(f"{len(split.validation)} validation case(s) not converted (--validation-to train|test|unlabeled to "
             f"use them)")


def _print_summary(target: str, record: dict, bad: List[Tuple[Job, str]]) -> None:
    if bad:
        warn(f"--skip-bad: {len(bad)} bad case(s) skipped:")
        for job, error in bad:
            print(f"  {job.case.case_id} ({job.role}): {error}", file=sys.stderr)
    n_unlabeled = len(record["unlabeled"]) + len(record["extra_unlabeled"])
    if record["validation"]["written_to"] == "unlabeled":
        n_unlabeled += len(record["validation"]["cases"])
    print(f"{target}: {len(record['labeled'])} labeled (imagesTr), {n_unlabeled} unlabeled (imagesUnlabeled), "
          f"{len(record['test'])} test (imagesTs); split recorded in {SPLIT_RECORD}")


# ----------------------------------------------------------------------------------------------------------
# 2D lesion datasets (ISIC, PH2): one plan shape


def lesion_plan(name: str, converter: str, source: str, cases: Dict[str, Case], training: List[str],
                max_size: Optional[int], **fields) -> ConversionPlan:
    """Plan of a dermoscopy dataset: RGB images, binary lesion masks, nnU-Net's natural-image convention."""
    return ConversionPlan(name=name, converter=converter, source=source, channel_names=dict(RGB_CHANNELS),
                          labels={"background": 0, "lesion": 1}, file_ending=PNG_ENDING, writer=write_rgb_case,
                          writer_options={"max_size": max_size}, cases=cases, training=training, **fields)


# ----------------------------------------------------------------------------------------------------------
# Writing a source as the (extra) test set of an existing dataset (PH2 -> an ISIC dataset)


def resolve_dataset_folder(output_root: str, spec: str) -> str:
    """`Dataset501_ISIC2018`, `501` or a path -> the existing raw dataset folder."""
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    match = re.fullmatch(r"(?:Dataset)?(\d{1,3})(_.+)?", spec)
    if not match or not os.path.isdir(output_root):
        raise ConversionError(f"{spec}: no such dataset folder (give DatasetXXX_Name, its id, or its path)")
    prefix = f"Dataset{int(match.group(1)):03d}_"
    found = [n for n in sorted(os.listdir(output_root)) if n.startswith(prefix)
             and (match.group(2) is None or n == prefix + match.group(2)[1:])]
    if len(found) != 1:
        raise ConversionError(f"{spec}: {'no' if not found else 'several'} matching dataset folder(s) in "
                              f"{output_root}{': ' + ', '.join(found) if found else ''}")
    return os.path.join(output_root, found[0])


def _check_compatible(dataset: str, plan: ConversionPlan) -> dict:
    dataset_json = read_json(os.path.join(dataset, "dataset.json"))
    if dataset_json is None:
        raise ConversionError(f"{os.path.join(dataset, 'dataset.json')}: missing or unreadable")
    label_values = lambda labels: sorted(v for v in labels.values() if not isinstance(v, (list, tuple)))  # noqa
    problems = []
    if dataset_json.get("file_ending") != plan.file_ending:
        problems.append(f"file_ending {dataset_json.get('file_ending')!r} (this converter writes "
                        f"{plan.file_ending!r})")
    if len(dataset_json.get("channel_names", {})) != len(plan.channel_names):
        problems.append(f"{len(dataset_json.get('channel_names', {}))} channels (this converter writes "
                        f"{len(plan.channel_names)})")
    if label_values(dataset_json.get("labels", {})) != label_values(plan.labels):
        problems.append(f"labels {dataset_json.get('labels')} (this converter writes {plan.labels})")
    if problems:
        raise ConversionError(f"{os.path.join(dataset, 'dataset.json')}: cannot hold {plan.name} as its test set: "
                              + "; ".join(problems))
    return dataset_json


def _check_test_folders_free(dataset: str, folders: Sequence[str], record: Optional[dict], overwrite: bool,
                             suffix_hint: str) -> None:
    """An existing imagesTs/labelsTs may be replaced only if it holds what an earlier run of this command wrote
    (re-run) or with --overwrite: it may hold the dataset's own test set."""
    ours = set(record.get("files", [])) if record else set()
    for folder in folders:
        path = os.path.join(dataset, folder)
        foreign = sorted(set(os.listdir(path)) - ours) if os.path.isdir(path) else []
        if foreign and not overwrite:
            raise ConversionError(f"{path} already holds {len(foreign)} file(s) this command did not write (e.g. "
                                  f"{foreign[0]}): use --test-folder-suffix {suffix_hint} to write separate "
                                  f"folders, or --overwrite to replace them")


def convert_external_test(plan: ConversionPlan, opts: ConvertOptions, target_spec: str, suffix: str = "") -> str:
    """Write every case of `plan` (or those of --test-list) as `imagesTs<suffix>/labelsTs<suffix>` of an existing
    dataset, e.g. PH2 as the external test set of a model trained on ISIC. The dataset's training data,
    dataset.json and split record are not touched; `external_test_<Name><suffix>.json` records what was done.
    A `--max-size` recorded by the dataset's own conversion is reused unless given."""
    if opts.labeled is not None or opts.labeled_fraction is not None or opts.test_fraction is not None:
        raise ConversionError("--labeled / --labeled-fraction / --test-fraction have no meaning with "
                              "--as-test-set-of (every case is a test case)")
    dataset = resolve_dataset_folder(opts.output_root, target_spec)
    _check_compatible(dataset, plan)
    folders = ("imagesTs" + suffix, "labelsTs" + suffix)
    record_path = os.path.join(dataset, f"external_test_{plan.name}{suffix}.json")
    _check_test_folders_free(dataset, folders, read_json(record_path), opts.overwrite, f"_{plan.name}")
    options = _inherit_max_size(plan.writer_options, dataset)
    test = plan.training + plan.test
    if "test" in opts.lists:
        test = read_case_list(opts.lists["test"], plan.list_entry_to_id)
    missing = [i for i in test if i not in plan.cases]
    if missing and not opts.skip_missing:
        raise ConversionError(_missing_message(plan, {"test": missing}, opts.lists, {"test": test}))
    temp = new_temp_folder(dataset, "external_test")
    try:
        jobs = [Job(plan.cases[i], "test", os.path.join(temp, folders[0]), os.path.join(temp, folders[1]))
                for i in test if i in plan.cases]
        for folder in folders:
            os.makedirs(os.path.join(temp, folder))
        bad = run_jobs(jobs, plan.writer, options, plan.file_ending, opts.num_processes, opts.skip_bad,
                       os.path.basename(dataset) + "/" + folders[0])
        written = sorted(n for f in folders for n in os.listdir(os.path.join(temp, f)))
        record = {"dataset": os.path.basename(dataset), "converter": f"nnunet_ssl.dataset_conversion.{plan.converter}",
                  "source": os.path.abspath(plan.source), "command": opts.command, "arguments": opts.arguments,
                  "writer_options": options, "folders": list(folders),
                  "test": [j.case.case_id for j in jobs if j.case.case_id not in {b.case.case_id for b, _ in bad}],
                  "missing": missing, "skipped_bad": [{"case": j.case.case_id, "error": e} for j, e in bad],
                  "files": written}
        with open(os.path.join(temp, "record.json"), "w") as f:
            json.dump(record, f, indent=1)
        for folder in folders:
            replace_folder(os.path.join(temp, folder), os.path.join(dataset, folder))
        os.replace(os.path.join(temp, "record.json"), record_path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    _print_summary_external(dataset, folders, record_path, record, bad)
    return dataset


def _inherit_max_size(options: dict, dataset: str) -> dict:
    if "max_size" not in options or options["max_size"]:
        return options
    recorded = (read_json(os.path.join(dataset, SPLIT_RECORD)) or {}).get("arguments", {}).get("max_size")
    if recorded:
        warn(f"--max-size {recorded}, as recorded in {os.path.join(dataset, SPLIT_RECORD)}")
        return {**options, "max_size": recorded}
    return options


def _print_summary_external(dataset: str, folders: Sequence[str], record_path: str, record: dict, bad) -> None:
    for job, error in bad:
        warn(f"--skip-bad: skipped {job.case.case_id}: {error}")
    print(f"{dataset}: {len(record['test'])} test cases in {folders[0]}/ and {folders[1]}/; recorded in "
          f"{os.path.basename(record_path)}")
