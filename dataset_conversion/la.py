"""Left atrium, 2018 Atrial Segmentation Challenge (LGE-MRI) -> nnU-Net 3D NIfTI dataset.

Two source layouts are accepted (`--format auto` tells them apart):

HDF5 version of the semi-supervised literature (UA-MT, SSL4MIS, BCP, SGRS-Net):

    SRC/2018LA_Seg_Training Set/<CASE_ID>/mri_norm2.h5   datasets `image` (float32, z-scored) and `label`
                                                         (uint8 0/1), axes x, y, z; no spacing stored
    SRC/train.list  (80 ids)   SRC/test.list  (20 ids)   found automatically next to the case folders

  The arrays are written with SimpleITK, which takes numpy arrays as (z, y, x): they are transposed from
  (x, y, z). Spacing 0.625 mm isotropic (the source scans; `--spacing` to change), origin 0, identity
  direction, the same for image and label.

Raw challenge release:

    SRC/Training Set/<CASE_ID>/lgemri.nrrd    image
    SRC/Training Set/<CASE_ID>/laendo.nrrd    left-atrium mask, 0/255 (-> 0/1)
    (stray files such as desktop.ini are ignored)

  Image and label keep the NRRD geometry (checked to be the same grid). `--train-list/--test-list` take
  the literature's lists here as well (the ids are the challenge's), else list files next to the data.

Split: the labeled cases are the first N of train.list (N = 4 or 8 in the literature: `--labeled 4` or
`--labeled-fraction 0.05`), the rest of train.list is the unlabeled pool, test.list the test set. A listed
case whose folder is absent stops the conversion with the list of absent cases; `--skip-missing` converts
the present ones and records the absent ones.
"""
import os
import re
from typing import Dict, Tuple

from nnunet_ssl.dataset_conversion.core import Case, ConversionError, ConversionPlan
from nnunet_ssl.dataset_conversion.source_tree import find_named_folder, find_split_lists, subdirs
from nnunet_ssl.dataset_conversion.volumes_3d import NIFTI_ENDING, write_h5_case, write_volume_case

NAME = "LA"
H5_FOLDER, H5_FILE = "2018LA_Seg_Training Set", "mri_norm2.h5"
RAW_FOLDER, RAW_IMAGE, RAW_LABEL = "Training Set", "lgemri.nrrd", "laendo.nrrd"


def add_arguments(parser) -> None:
    parser.add_argument("--format", choices=("auto", "h5", "nrrd"), default="auto",
                        help="source layout (default: detect)")
    parser.add_argument("--spacing", type=float, default=0.625,
                        help="HDF5 only: voxel size in mm (the files store none; default 0.625, the source scans)")


def _cases_folder(src: str, fmt: str) -> Tuple[str, str]:
    """(format, folder holding the case folders)."""
    wanted = {"h5": [("h5", H5_FOLDER, H5_FILE)], "nrrd": [("nrrd", RAW_FOLDER, RAW_IMAGE)],
              "auto": [("h5", H5_FOLDER, H5_FILE), ("nrrd", RAW_FOLDER, RAW_IMAGE)]}[fmt]
    for kind, folder_name, case_file in wanted:
        folder = find_named_folder(src, re.escape(folder_name))
        if folder is None and any(os.path.isfile(os.path.join(src, d, case_file)) for d in subdirs(src)):
            folder = src  # SRC is the case folder itself
        if folder is not None:
            return kind, folder
    expected = " or ".join(f"SRC/{f}/<ID>/{c}" for _, f, c in wanted)
    raise ConversionError(f"{src}: no LA cases found (expected {expected})")


def discover_cases(folder: str, fmt: str) -> Tuple[Dict[str, Case], Dict[str, str]]:
    """Case folders holding the expected file; folders without it are reported as absent with the reason."""
    cases, absent = {}, {}
    for case_id in subdirs(folder):
        case_dir = os.path.join(folder, case_id)
        image = os.path.join(case_dir, H5_FILE if fmt == "h5" else RAW_IMAGE)
        if not os.path.isfile(image):
            absent[case_id] = f"folder has no {os.path.basename(image)}"
            continue
        label = image if fmt == "h5" else os.path.join(case_dir, RAW_LABEL)
        cases[case_id] = Case(case_id, (image,), label)
    return cases, absent


def plan(args) -> ConversionPlan:
    if not os.path.isdir(args.src):
        raise ConversionError(f"{args.src}: source folder does not exist")
    fmt, folder = _cases_folder(args.src, args.format)
    cases, absent = discover_cases(folder, fmt)
    if not cases:
        raise ConversionError(f"{folder}: no case folder holds {H5_FILE if fmt == 'h5' else RAW_IMAGE}")
    list_files = find_split_lists([args.src, folder, os.path.dirname(os.path.abspath(folder))])
    if fmt == "h5":
        writer, options = write_h5_case, {"spacing": (args.spacing,) * 3, "label_map": {0: 0, 1: 1}}
    else:
        writer, options = write_volume_case, {"label_map": {0: 0, 255: 1}, "label_geometry": "strict"}
    return ConversionPlan(
        name=NAME, converter="la", source=args.src, channel_names={0: "LGE-MRI"},
        labels={"background": 0, "left atrium": 1}, file_ending=NIFTI_ENDING, writer=writer,
        writer_options=options, cases=cases, training=sorted(cases), list_files=list_files,
        absent_reasons=absent, description=f"Left atrium, 2018 Atrial Segmentation Challenge ({fmt})",
        reference="Xiong et al., Medical Image Analysis 2021 (2018 Atrial Segmentation Challenge)")
