"""FLARE 2022 (abdominal organs in CT, 50 labeled + 2000 unlabeled) -> nnU-Net 3D NIfTI dataset.

Expected source layout (folder names matched loosely: `FLARE22_LabeledCase50` or `FLARE_LabeledCase50`,
any letter case):

    SRC/Training/FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz   (the `_0000` may be absent)
    SRC/Training/FLARE22_LabeledCase50/labels/FLARE22_Tr_0001.nii.gz
    SRC/Training/FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz          -> unlabeled pool
    SRC/Training/FLARE22_UnlabeledCase1001-2000/Case_01001_0000.nii.gz       -> unlabeled pool
    SRC/Tuning/images/FLARE22_Ts_0001_0000.nii.gz, SRC/Tuning/labels/FLARE22_Ts_0001.nii.gz  -> test set
                                                                              (no labels/: no test set)

Labels 0..13: liver, right kidney, spleen, pancreas, aorta, inferior vena cava, right adrenal gland, left
adrenal gland, gallbladder, esophagus, stomach, duodenum, left kidney (other values are an error). Image and
label must share one grid (checked). The CTs are copied byte for byte when already on that grid.

The labeled cases are all 50 (the challenge setting), or with `--labeled N` the first N of the seeded
shuffle (or of `--train-list`). The unlabeled CTs all go to imagesUnlabeled (`--extra-unlabeled-limit N`
takes the first N by id, `--no-extra-unlabeled` none); only their headers are checked here, their voxels
are read by `nnunet_ssl preprocess-unlabeled`.
"""
import os
import re
from typing import Dict, List

from nnunet_ssl.dataset_conversion.core import Case, ConversionError, ConversionPlan
from nnunet_ssl.dataset_conversion.source_tree import (files_matching, find_file_ci, find_named_folder,
                                                       strip_channel_suffix, subdirs)
from nnunet_ssl.dataset_conversion.volumes_3d import NIFTI_ENDING, write_volume_case

NAME = "FLARE22"
HAS_EXTRA_UNLABELED = True
ORGANS = ("liver", "right kidney", "spleen", "pancreas", "aorta", "inferior vena cava", "right adrenal gland",
          "left adrenal gland", "gallbladder", "esophagus", "stomach", "duodenum", "left kidney")
LABELED_FOLDER = r"FLARE(22)?_?LabeledCase\d*"
UNLABELED_FOLDER = re.compile(r"FLARE(22)?_?UnlabeledCase(\d+)-\d+", re.IGNORECASE)
NIFTI_FILE = r".+\.nii\.gz"


def add_arguments(parser) -> None:
    parser.add_argument("--extra-unlabeled-limit", type=int, metavar="N",
                        help="only the first N unlabeled CTs (by id) go to imagesUnlabeled")


def _image_label_cases(images_dir: str, labels_dir: str) -> Dict[str, Case]:
    cases = {}
    for name in files_matching(images_dir, NIFTI_FILE):
        case_id = strip_channel_suffix(name, NIFTI_ENDING)
        cases[case_id] = Case(case_id, (os.path.join(images_dir, name),),
                              find_file_ci(labels_dir, case_id + NIFTI_ENDING))
    return cases


def _unlabeled_cases(training_root: str, limit) -> List[Case]:
    folders = sorted((int(m.group(2)), n) for n in subdirs(training_root) if (m := UNLABELED_FOLDER.fullmatch(n)))
    cases = [Case(strip_channel_suffix(f, NIFTI_ENDING), (os.path.join(training_root, n, f),))
             for _, n in folders for f in files_matching(os.path.join(training_root, n), NIFTI_FILE)]
    cases.sort(key=lambda c: c.case_id)
    return cases[:limit] if limit is not None else cases


def plan(args) -> ConversionPlan:
    if not os.path.isdir(args.src):
        raise ConversionError(f"{args.src}: source folder does not exist")
    training_root = find_named_folder(args.src, "Training", max_depth=1) or args.src
    labeled = find_named_folder(training_root, LABELED_FOLDER, max_depth=1)
    if labeled is None:
        raise ConversionError(f"{args.src}: no FLARE22_LabeledCase50 folder (expected SRC/Training/"
                              f"FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz and .../labels/)")
    cases = _image_label_cases(os.path.join(labeled, "images"), os.path.join(labeled, "labels"))
    if not cases:
        raise ConversionError(f"{os.path.join(labeled, 'images')}: no .nii.gz images")
    fields = {"training": sorted(cases), "notes": []}
    tuning = find_named_folder(args.src, "Tuning", max_depth=1)
    if tuning is not None and os.path.isdir(os.path.join(tuning, "labels")):
        test_cases = _image_label_cases(os.path.join(tuning, "images"), os.path.join(tuning, "labels"))
        cases.update(test_cases)
        fields["test"] = sorted(test_cases)
    else:
        fields["notes"].append(f"no Tuning/labels folder under {args.src}: no test set")
    if not args.no_extra_unlabeled:
        fields["extra_unlabeled"] = _unlabeled_cases(training_root, args.extra_unlabeled_limit)
    return ConversionPlan(
        name=NAME, converter="flare", source=args.src, channel_names={0: "CT"},
        labels={"background": 0, **{organ: i for i, organ in enumerate(ORGANS, 1)}}, file_ending=NIFTI_ENDING,
        writer=write_volume_case, writer_options={"label_map": {i: i for i in range(len(ORGANS) + 1)},
                                                  "label_geometry": "strict"},
        cases=cases, description="FLARE 2022: 13 abdominal organs in CT",
        reference="Ma et al., MICCAI FLARE 2022, https://flare22.grand-challenge.org", **fields)
