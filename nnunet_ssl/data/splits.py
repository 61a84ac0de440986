"""Cross-validation splits that work with few labeled cases and never hold unlabeled cases.

nnU-Net builds a 5-fold split with KFold(5) on first training, which fails with fewer than 5 labeled cases.
The project writes `splits_final.json` up front with K = min(5, n_labeled) folds (n < 5 is leave-one-out),
using nnU-Net's own generate_crossval_split and seed, so for n >= 5 the file equals what nnU-Net would make.
Every trainer of the dataset (nnUNetTrainer included) then reads the same file.
"""
import json
import os
from typing import Iterable, Sequence

from nnunet_ssl.utilities.atomic import write_json
from nnunet_ssl.utilities.inputs import UserError

SPLITS_FILE = "splits_final.json"
NNUNET_SPLIT_SEED = 12345  # nnUNetTrainer.do_split's seed


class SplitError(UserError):
    pass


def labeled_case_ids(raw_dataset_folder: str, dataset_json: dict) -> list:
    """The labeled cases (imagesTr with labelsTr) of a raw dataset, as nnU-Net finds them."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    return list(get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json))


def ensure_splits(preprocessed_dataset_folder_base: str, labeled: Sequence[str],
                  unlabeled: Iterable[str] = ()) -> str:
    """Create splits_final.json if missing, else check it; returns a one-line description of what was done."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    path = os.path.join(preprocessed_dataset_folder_base, SPLITS_FILE)
    labeled, unlabeled = sorted(labeled), set(unlabeled)
    if os.path.isfile(path):
        with open(path) as f:
            splits = json.load(f)
        for i, fold in enumerate(splits):
            unknown = sorted((set(fold["train"]) | set(fold["val"])) - set(labeled))
            in_pool = sorted((set(fold["train"]) | set(fold["val"])) & unlabeled)
            if in_pool:
                raise SplitError(f"{path}: fold {i} contains unlabeled cases {in_pool[:5]}; validation and "
                                 f"training folds may hold labeled cases only")
            if unknown:
                raise SplitError(f"{path}: fold {i} names cases that are not labeled training cases: {unknown[:5]}")
        return f"{path}: existing split kept ({len(splits)} folds)"
    if len(labeled) < 2:
        raise SplitError(f"{len(labeled)} labeled case(s): cross-validation needs at least 2 (train on 'all' instead)")
    n_folds = min(5, len(labeled))
    splits = generate_crossval_split(labeled, seed=NNUNET_SPLIT_SEED, n_splits=n_folds)
    os.makedirs(preprocessed_dataset_folder_base, exist_ok=True)
    write_json(path, splits)
    kind = "leave-one-out, " if n_folds == len(labeled) and n_folds < 5 else ""
    return f"{path}: created a {n_folds}-fold split ({kind}{len(labeled)} labeled cases)"
