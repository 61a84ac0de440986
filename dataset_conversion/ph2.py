"""PH2 dermoscopy dataset (ADDI project, Mendonca et al., EMBC 2013) -> nnU-Net 2D RGB dataset.

Expected source layout (as distributed; SRC is the folder that holds `PH2 Dataset images/`, or that folder):

    SRC/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp   RGB image (about 765x572)
    SRC/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp       lesion mask
    SRC/PH2_dataset.txt, SRC/Readme.txt                                  (ignored)

Not used: `IMDxxx_lesion/IMDxxx_lesion.jpg` (a lossy JPEG copy of the mask: its edges hold in-between grey
values), `IMDxxx_roi/` (colour-class masks, not the segmentation target). Most lesion masks are 1-bit BMPs
(0/1), at least one is a 24-bit RGB BMP (0/255); both read as lesion = 1, any other value is an error.

PH2 has no official split: every case is a training case (labeled ones by the seeded shuffle, or the first
N of `--train-list`), `--test-fraction` holds out a seeded test set. `--as-test-set-of DatasetXXX` instead
writes all cases as imagesTs/labelsTs of an existing ISIC dataset (external test set).
"""
import os
import re
from typing import Dict

from nnunet_ssl.dataset_conversion.core import Case, ConversionError
from nnunet_ssl.dataset_conversion.images_2d import lesion_plan
from nnunet_ssl.dataset_conversion.source_tree import find_file_ci, find_named_folder, subdirs

NAME = "PH2"
IS_2D = True
IMAGES_FOLDER = "PH2 Dataset images"
CASE_FOLDER = re.compile(r"IMD\d+", re.IGNORECASE)


def add_arguments(parser) -> None:
    parser.add_argument("--as-test-set-of", metavar="DATASET",
                        help="write PH2 as imagesTs/labelsTs of this existing dataset (name, id or path; e.g. an "
                             "ISIC dataset) instead of a dataset of its own; -d is then not needed")
    parser.add_argument("--test-folder-suffix", default="", metavar="SUFFIX",
                        help="with --as-test-set-of: write imagesTs<SUFFIX>/labelsTs<SUFFIX> (e.g. _PH2), to keep "
                             "the dataset's own test set")


def find_images_folder(src: str) -> str:
    folder = find_named_folder(src, re.escape(IMAGES_FOLDER))
    if folder is None and os.path.isdir(src) and any(CASE_FOLDER.fullmatch(n) for n in subdirs(src)):
        folder = src
    if folder is None:
        raise ConversionError(f"{src}: no '{IMAGES_FOLDER}' folder (expected SRC/{IMAGES_FOLDER}/IMDxxx/"
                              f"IMDxxx_Dermoscopic_Image/IMDxxx.bmp)")
    return folder


def discover_cases(images_folder: str) -> Dict[str, Case]:
    cases = {}
    for case_id in (n for n in subdirs(images_folder) if CASE_FOLDER.fullmatch(n)):
        case_dir = os.path.join(images_folder, case_id)
        image = find_file_ci(os.path.join(case_dir, f"{case_id}_Dermoscopic_Image"), f"{case_id}.bmp")
        mask = find_file_ci(os.path.join(case_dir, f"{case_id}_lesion"), f"{case_id}_lesion.bmp")
        cases[case_id] = Case(case_id, (image,), mask)
    if not cases:
        raise ConversionError(f"{images_folder}: no IMDxxx case folders")
    return cases


def plan(args):
    if not os.path.isdir(args.src):
        raise ConversionError(f"{args.src}: source folder does not exist")
    cases = discover_cases(find_images_folder(args.src))
    return lesion_plan(NAME, "ph2", args.src, cases, sorted(cases), args.max_size,
                       description="PH2 dermoscopy images with lesion masks",
                       reference="Mendonca et al., PH2 - A dermoscopic image database, EMBC 2013")
