"""BraTS 2019 training data -> nnU-Net 3D NIfTI dataset, in one of two tasks (`--task`).

Expected source layout (SRC is `MICCAI_BraTS_2019_Data_Training/` or the folder holding it):

    SRC/MICCAI_BraTS_2019_Data_Training/HGG/<case>/<case>_t1.nii.gz, _t1ce, _t2, _flair, _seg
    SRC/MICCAI_BraTS_2019_Data_Training/LGG/<case>/...              (plain `.nii` files are accepted too)
    (name_mapping.csv, survival_data.csv: ignored)

Labels in `_seg`: 0 background, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour; any other
value is an error. All channels and the label must share one grid (checked).

`--task ssl` (default): the semi-supervised literature's task: FLAIR only, whole tumour (labels 1, 2, 4) as
one label; 250 / 25 / 60 train / validation / test cases (`--split-sizes`; SSL4MIS's BraTS 2019 split). Give
that paper's lists with `--train-list/--val-list/--test-list`, else the case ids are sorted, shuffled with
`random.Random(--seed)` and cut into those sizes. Labeled = the first N of the training part. Validation
cases follow `--validation-to` (default: not converted; nnU-Net selects models by its own cross-validation).

`--task full`: all four channels (T1, T1ce, T2, FLAIR = _0000.._0003) and nnU-Net's region-based labels,
exactly as nnU-Net's own BraTS conversion (Dataset137_BraTS21): labels remapped 0, 2, 1, 4 -> 0, 1, 2, 3 and
regions whole tumour (1, 2, 3), tumour core (2, 3), enhancing tumour (3), regions_class_order (1, 2, 3).
Every case is a training case (seeded labeled selection; `--test-fraction` for a test set).
"""
import os
from typing import Dict, List

from nnunet_ssl.dataset_conversion.core import Case, ConversionError, ConversionPlan
from nnunet_ssl.dataset_conversion.source_tree import find_file_ci, find_named_folder, subdirs
from nnunet_ssl.dataset_conversion.split import seeded_order
from nnunet_ssl.dataset_conversion.volumes_3d import NIFTI_ENDING, write_volume_case

ROOT_FOLDER = r"MICCAI_BraTS_?2019_Data_Training"
GRADES = ("HGG", "LGG")
ALL_MODALITIES = ("t1", "t1ce", "t2", "flair")
TASKS = {
    "ssl": {"name": "BraTS2019FlairWT", "modalities": ("flair",), "channel_names": {0: "FLAIR"},
            "labels": {"background": 0, "whole tumor": 1}, "label_map": {0: 0, 1: 1, 2: 1, 4: 1},
            "regions_class_order": None},
    # as nnunetv2/dataset_conversion/Dataset137_BraTS21.py
    "full": {"name": "BraTS2019", "modalities": ALL_MODALITIES,
             "channel_names": {0: "T1", 1: "T1ce", 2: "T2", 3: "Flair"},
             "labels": {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)},
             "label_map": {0: 0, 2: 1, 1: 2, 4: 3}, "regions_class_order": (1, 2, 3)},
}


def add_arguments(parser) -> None:
    parser.add_argument("--task", choices=tuple(TASKS), default="ssl",
                        help="ssl: FLAIR, whole tumour, 250/25/60 split (default); full: 4 channels, region labels")
    parser.add_argument("--split-sizes", type=int, nargs=3, default=(250, 25, 60), metavar=("TRAIN", "VAL", "TEST"),
                        help="--task ssl without list files: sizes of the seeded split (default 250 25 60)")


def _root(src: str) -> str:
    root = find_named_folder(src, ROOT_FOLDER)
    if root is None and any(g.upper() in GRADES for g in subdirs(src)):
        root = src
    if root is None:
        raise ConversionError(f"{src}: no MICCAI_BraTS_2019_Data_Training folder (expected SRC/"
                              f"MICCAI_BraTS_2019_Data_Training/HGG/<case>/<case>_flair.nii.gz)")
    return root


def _modality_file(case_dir: str, case: str, suffix: str) -> str:
    """`<case>_<suffix>.nii.gz`, else `.nii`; the `.nii.gz` path (reported as missing) when neither exists."""
    for ending in (NIFTI_ENDING, ".nii"):
        path = find_file_ci(case_dir, f"{case}_{suffix}{ending}")
        if os.path.isfile(path):
            return path
    return os.path.join(case_dir, f"{case}_{suffix}{NIFTI_ENDING}")


def discover_cases(root: str, modalities) -> Dict[str, Case]:
    cases = {}
    for grade in (g for g in subdirs(root) if g.upper() in GRADES):
        for case in subdirs(os.path.join(root, grade)):
            case_dir = os.path.join(root, grade, case)
            images = tuple(_modality_file(case_dir, case, m) for m in modalities)
            cases[case] = Case(case, images, _modality_file(case_dir, case, "seg"))
    if not cases:
        raise ConversionError(f"{root}: no case folders under HGG/ or LGG/")
    return cases


def _ssl_split(ids: List[str], sizes, seed: int) -> dict:
    if sum(sizes) != len(ids):
        raise ConversionError(f"--split-sizes {' '.join(map(str, sizes))} needs {sum(sizes)} cases, the source has "
                              f"{len(ids)}: give --split-sizes TRAIN VAL TEST summing to {len(ids)}, or list files")
    order = seeded_order(ids, seed)
    n_train, n_val = sizes[0], sizes[0] + sizes[1]
    return {"training": order[:n_train], "validation": order[n_train:n_val], "test": order[n_val:],
            "training_in_order": True,
            "split_description": f"case ids sorted, shuffled with random.Random({seed}).shuffle, cut into "
                                 f"{sizes[0]} train / {sizes[1]} validation / {sizes[2]} test; labeled = the first "
                                 f"N of the train part"}


def plan(args) -> ConversionPlan:
    if not os.path.isdir(args.src):
        raise ConversionError(f"{args.src}: source folder does not exist")
    task = TASKS[args.task]
    cases = discover_cases(_root(args.src), task["modalities"])
    uses_lists = any(getattr(args, f"{r}_list") for r in ("train", "val", "test"))
    if args.task == "ssl" and not uses_lists:
        split = _ssl_split(sorted(cases), args.split_sizes, args.seed)
    else:
        split = {"training": sorted(cases)}
    return ConversionPlan(
        name=task["name"], converter="brats", source=args.src, channel_names=dict(task["channel_names"]),
        labels=dict(task["labels"]), file_ending=NIFTI_ENDING, writer=write_volume_case,
        writer_options={"label_map": task["label_map"], "label_geometry": "strict"}, cases=cases,
        regions_class_order=task["regions_class_order"], description=f"BraTS 2019, task {args.task}",
        reference="Menze et al., IEEE TMI 2015; Bakas et al., arXiv:1811.02629", **split)
