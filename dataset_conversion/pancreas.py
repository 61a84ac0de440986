"""NIH Pancreas-CT (TCIA) -> nnU-Net 3D NIfTI dataset. Case ids are `PANCREAS_0001` ... in every layout.

Two source layouts are accepted (`--format auto` tells them apart):

DICOM release (as downloaded with the NBIA Data Retriever; the folders may sit one or two levels deeper,
e.g. under `manifest-<number>/`):

    SRC/Pancreas-CT/PANCREAS_0001/<study>/<series>/*.dcm       one CT series per case
    SRC/TCIA_pancreas_labels-02-05-2017/label0001.nii.gz       pancreas mask 0/1 (`--labels-dir` to point
                                                               elsewhere)

  Slices are ordered by their position along the slice normal (ImagePositionPatient), never by file name,
  and must form one regular series. The label is put on the CT's grid through the physical geometry in
  both headers (a label stored with flipped or permuted axes is reoriented exactly; anything else is an
  error; `--label-geometry voxel` trusts the label's voxel order instead, for labels with broken headers).
  Not every id has both: a CT without a label goes to the unlabeled pool (`--no-extra-unlabeled` to leave
  it out), a label without a CT is reported.

HDF5 version of the semi-supervised literature (DTC, MC-Net, BCP):

    SRC/Pancreas_h5/image0001_norm.h5     datasets `image` (float32) and `label` (uint8 0/1), axes x, y, z
    SRC/train.list, SRC/test.list         the 62 / 20 split lists, found next to the h5 folder

  The files store no spacing: `--spacing` (default 1.0 mm, the isotropic resampling of that preprocessing).

Split: with list files (any id spelling, `image0001_norm`, `PANCREAS_0001`, `0001`) the labeled cases are the
first N of the training list; without, the seeded shuffle (and `--test-fraction` for a test set).
"""
import os
import re
from typing import Dict, List, Optional, Tuple

from nnunet_ssl.dataset_conversion.core import Case, ConversionError, ConversionPlan
from nnunet_ssl.dataset_conversion.source_tree import files_matching, find_named_folder, find_split_lists, subdirs
from nnunet_ssl.dataset_conversion.split import default_list_entry_to_id
from nnunet_ssl.dataset_conversion.volumes_3d import NIFTI_ENDING, write_h5_case, write_volume_case

NAME = "PancreasCT"
HAS_EXTRA_UNLABELED = True
CT_FOLDER = r"Pancreas-CT"
LABELS_FOLDER = r"TCIA_pancreas_labels.*"
H5_FOLDER = r"Pancreas_h5"
CASE_FOLDER = re.compile(r"PANCREAS_(\d+)", re.IGNORECASE)
LABEL_FILE = r"label(\d+)\.nii(\.gz)?"
H5_FILE = r"\D*(\d+)\D*\.h5"


def add_arguments(parser) -> None:
    parser.add_argument("--format", choices=("auto", "dicom", "h5"), default="auto",
                        help="source layout (default: detect)")
    parser.add_argument("--labels-dir", help="folder with label0001.nii.gz ... (default: the "
                                             "TCIA_pancreas_labels* folder found under SRC)")
    parser.add_argument("--label-geometry", choices=("physical", "voxel"), default="physical",
                        help="how a label is put on its CT's grid: through the header geometry (default) or by "
                             "voxel index (for labels with broken headers)")
    parser.add_argument("--spacing", type=float, default=1.0, help="HDF5 only: voxel size in mm (default 1.0)")


def case_id(number: str) -> str:
    return f"PANCREAS_{int(number):04d}"


def list_entry_to_id(entry: str) -> Optional[str]:
    """`image0001_norm`, `image0001_norm.h5`, `PANCREAS_0001`, `label0001.nii.gz`, `1` -> `PANCREAS_0001`."""
    digits = re.search(r"\d+", default_list_entry_to_id(entry) or "")  # the first run: `.h5` holds a digit
    return case_id(digits.group()) if digits else None


def _h5_cases(folder: str) -> Dict[str, Case]:
    cases = {}
    for name in files_matching(folder, H5_FILE):
        path = os.path.join(folder, name)
        cases[list_entry_to_id(name)] = Case(list_entry_to_id(name), (path,), path)
    return cases


def _dicom_cases(ct_folder: str, labels_folder: str) -> Tuple[Dict[str, Case], List[Case], Dict[str, str]]:
    """(cases with CT and label, CTs without label, absent reasons)."""
    cts = {case_id(m.group(1)): os.path.join(ct_folder, n) for n in subdirs(ct_folder)
           if (m := CASE_FOLDER.fullmatch(n))}
    labels = {case_id(re.fullmatch(LABEL_FILE, n, re.IGNORECASE).group(1)): os.path.join(labels_folder, n)
              for n in files_matching(labels_folder, LABEL_FILE)}
    cases = {i: Case(i, (cts[i],), labels[i]) for i in sorted(cts) if i in labels}
    unlabeled = [Case(i, (cts[i],)) for i in sorted(cts) if i not in labels]
    absent = {**{i: f"no label{i[-4:]}.nii.gz in {labels_folder}" for i in cts if i not in labels},
              **{i: f"label but no CT folder in {ct_folder}" for i in labels if i not in cts}}
    return cases, unlabeled, absent


def _find_dicom_folders(args) -> Tuple[str, str]:
    ct_folder = find_named_folder(args.src, CT_FOLDER, max_depth=3)
    if ct_folder is None:
        raise ConversionError(f"{args.src}: no Pancreas-CT folder (expected SRC/Pancreas-CT/PANCREAS_0001/<study>/"
                              f"<series>/*.dcm) and no Pancreas_h5 folder")
    labels_folder = args.labels_dir or find_named_folder(args.src, LABELS_FOLDER, max_depth=3)
    if labels_folder is None or not os.path.isdir(labels_folder):
        raise ConversionError(f"{labels_folder or args.src}: no TCIA_pancreas_labels* folder (expected "
                              f"label0001.nii.gz ...; --labels-dir to give it)")
    return ct_folder, labels_folder


def _detect_format(args) -> Tuple[str, Optional[str]]:
    h5_folder = find_named_folder(args.src, H5_FOLDER)
    if h5_folder is None and files_matching(args.src, H5_FILE):
        h5_folder = args.src
    if args.format == "h5" or (args.format == "auto" and h5_folder is not None):
        if h5_folder is None:
            raise ConversionError(f"{args.src}: no Pancreas_h5 folder and no *.h5 files")
        return "h5", h5_folder
    return "dicom", None


def plan(args) -> ConversionPlan:
    if not os.path.isdir(args.src):
        raise ConversionError(f"{args.src}: source folder does not exist")
    fmt, h5_folder = _detect_format(args)
    fields = {"notes": []}
    if fmt == "h5":
        cases, near = _h5_cases(h5_folder), [args.src, h5_folder, os.path.dirname(os.path.abspath(h5_folder))]
        writer, options = write_h5_case, {"spacing": (args.spacing,) * 3, "label_map": {0: 0, 1: 1}}
    else:
        ct_folder, labels_folder = _find_dicom_folders(args)
        cases, unlabeled, fields["absent_reasons"] = _dicom_cases(ct_folder, labels_folder)
        near = [args.src, os.path.dirname(os.path.abspath(ct_folder))]
        writer, options = write_volume_case, {"label_map": {0: 0, 1: 1}, "label_geometry": args.label_geometry}
        if unlabeled:
            fields["notes"].append(f"{len(unlabeled)} CT(s) without a label: "
                                   f"{'left out' if args.no_extra_unlabeled else 'unlabeled pool'}: "
                                   f"{', '.join(c.case_id for c in unlabeled)}")
            fields["extra_unlabeled"] = [] if args.no_extra_unlabeled else unlabeled
    if not cases:
        raise ConversionError(f"{args.src}: no Pancreas-CT case with both image and label")
    return ConversionPlan(
        name=NAME, converter="pancreas", source=args.src, channel_names={0: "CT"},
        labels={"background": 0, "pancreas": 1}, file_ending=NIFTI_ENDING, writer=writer, writer_options=options,
        cases=cases, training=sorted(cases), list_files=find_split_lists(near), list_entry_to_id=list_entry_to_id,
        description=f"NIH Pancreas-CT ({fmt})", reference="Roth et al., TCIA Pancreas-CT, "
                                                          "doi:10.7937/K9/TCIA.2016.tNB1kqBU", **fields)
