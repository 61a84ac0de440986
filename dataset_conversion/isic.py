"""ISIC 2016 / 2017 / 2018 lesion segmentation (Task 1 / Part 1) -> nnU-Net 2D RGB dataset.

Expected source layout: SRC holds the unzipped challenge folders (each may sit one level deeper, or inside a
folder of its own name, as some unzip tools do):

    ISIC 2016 (`isic2016`):
        ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg
        ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png      (capital S)
        ISBI2016_ISIC_Part1_Test_Data/, ISBI2016_ISIC_Part1_Test_GroundTruth/
    ISIC 2017 (`isic2017`):
        ISIC-2017_Training_Data/ISIC_0000000.jpg    (also *_superpixels.png and a metadata CSV: ignored)
        ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png
        ISIC-2017_Validation_Data/, ISIC-2017_Validation_Part1_GroundTruth/
        ISIC-2017_Test_v2_Data/, ISIC-2017_Test_v2_Part1_GroundTruth/
    ISIC 2018 Task 1 (`isic2018`):
        ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg   (also ATTRIBUTION.txt, LICENSE.txt: ignored)
        ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png
        ISIC2018_Task1-2_Validation_Input/, ISIC2018_Task1_Validation_GroundTruth/
        ISIC2018_Task1-2_Test_Input/, ISIC2018_Task1_Test_GroundTruth/

Only `ISIC_<digits>.jpg` files are images. Masks are 0/255 PNGs (lesion = 1; other values are an error).
Roles: Training = the training cases; Test = the test set (`--test-to unlabeled` puts its images in the
unlabeled pool instead, e.g. ISIC 2018 inputs downloaded without ground truth; `--test-to skip`); Validation
(2017, 2018) follows `--validation-to` (default: not converted). Without `--train-list` the labeled cases
are the first N of the seeded shuffle of the training ids.
"""
import os
import re
from typing import Dict, List, Optional, Tuple

from nnunet_ssl.dataset_conversion.core import Case, ConversionError
from nnunet_ssl.dataset_conversion.images_2d import lesion_plan
from nnunet_ssl.dataset_conversion.source_tree import files_matching, find_file_ci, find_named_folder

IS_2D = True
IMAGE_PATTERN = r"ISIC_\d+\.jpe?g"
# year -> role -> (image folder, ground-truth folder)
SUBSETS = {
    2016: {"training": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
           "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth")},
    2017: {"training": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
           "validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
           "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth")},
    2018: {"training": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
           "validation": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
           "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth")},
}


def add_arguments(parser) -> None:
    parser.add_argument("--test-to", choices=("test", "unlabeled", "skip"), default="test",
                        help="where the Test subset goes: imagesTs/labelsTs (default; needs its ground truth), "
                             "the unlabeled pool (images only), or nowhere")


def _subset(src: str, image_folder: str, gt_folder: str, mask_suffix: str) -> Tuple[Optional[List[Case]], bool]:
    """(cases or None when the image folder is absent, whether the ground-truth folder exists). Each case's
    label is the expected mask path, so a missing mask is reported by name."""
    images = find_named_folder(src, re.escape(image_folder))
    if images is None:
        return None, False
    masks = find_named_folder(src, re.escape(gt_folder))
    mask_dir = masks or os.path.join(src, gt_folder)
    cases = [Case(n.rsplit(".", 1)[0], (os.path.join(images, n),),
                  find_file_ci(mask_dir, n.rsplit(".", 1)[0] + mask_suffix))
             for n in files_matching(images, IMAGE_PATTERN)]
    return cases, masks is not None


def _no_ground_truth(src: str, gt_folder: str, role: str) -> ConversionError:
    if role == "training":
        return ConversionError(f"{src}: no ground-truth folder {gt_folder}: the training images need their masks")
    option = f"--{role}-to"
    return ConversionError(f"{src}: no ground-truth folder {gt_folder} for the {role} images; use {option} "
                           f"unlabeled (images into the unlabeled pool) or {option} skip")


def _assign_roles(args, subsets: Dict[str, Tuple[Optional[List[Case]], bool]], fields: dict) -> None:
    """Fill the plan fields (training, validation, test, extra_unlabeled, notes) from the subsets found."""
    for role, (found, has_gt) in subsets.items():
        image_folder, gt_folder = SUBSETS[args.year][role]
        if not found:
            fields["notes"].append(f"no {image_folder} folder with ISIC_*.jpg images under {args.src}: no {role} "
                                   f"subset")
            continue
        goes_to = {"training": "train", "validation": args.validation_to, "test": args.test_to}[role]
        if goes_to in ("train", "test") and not has_gt:
            raise _no_ground_truth(args.src, gt_folder, role)
        ids = [c.case_id for c in found]
        if role == "training":
            fields["training"] = ids
        elif role == "validation":
            fields["validation"] = ids  # the core sends them where --validation-to says
        elif goes_to == "test":
            fields["test"] = ids
        elif goes_to == "unlabeled":
            fields["extra_unlabeled"] = found


def plan(args):
    if not os.path.isdir(args.src):
        raise ConversionError(f"{args.src}: source folder does not exist")
    mask_suffix = "_Segmentation.png" if args.year == 2016 else "_segmentation.png"  # any letter case accepted
    subsets = {role: _subset(args.src, *folders, mask_suffix) for role, folders in SUBSETS[args.year].items()}
    if subsets["training"][0] is None:
        raise ConversionError(f"{args.src}: no {SUBSETS[args.year]['training'][0]} folder (expected "
                              f"SRC/{SUBSETS[args.year]['training'][0]}/ISIC_*.jpg)")
    cases: Dict[str, Case] = {}
    for role, (found, _) in subsets.items():
        for case in found or []:
            if case.case_id in cases:
                raise ConversionError(f"{case.images[0]}: case id {case.case_id} also in "
                                      f"{cases[case.case_id].images[0]}")
            if not (role == "test" and args.test_to == "unlabeled"):  # those are image-only extra cases
                cases[case.case_id] = case
    fields = {"training": [], "notes": []}
    _assign_roles(args, subsets, fields)
    if not fields["training"]:
        raise ConversionError(f"{args.src}: no ISIC_*.jpg image in {SUBSETS[args.year]['training'][0]}")
    return lesion_plan(f"ISIC{args.year}", "isic", args.src, cases, max_size=args.max_size,
                       description=f"ISIC {args.year} lesion segmentation",
                       reference="https://challenge.isic-archive.com", **fields)
