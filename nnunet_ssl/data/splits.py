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


# ---------------------------------------------------------------------- labeled draws (nnunet_ssl benchmark --draws)
DRAW_RECORD = "draw.json"


# The "draw" with every training case labeled: the fully supervised upper bound (nnunet_ssl benchmark --upper-bound)
ALL_LABELED = "all"


def draw_name(dataset_name: str, draw) -> str:
    """The dataset name of draw `draw`: the source's for draw 1, `<source>_draw<k>` for the others,
    `<source>_all_labeled` for ALL_LABELED."""
    if draw == ALL_LABELED:
        return f"{dataset_name}_all_labeled"
    return dataset_name if draw == 1 else f"{dataset_name}_draw{draw}"


def draw_labeled_cases(candidates: Sequence[str], n_labeled: int, draw) -> list:
    """The labeled cases of draw `draw` (>= 2): `n_labeled` of the sorted `candidates`, drawn with
    random.Random(draw).sample, sorted; every candidate for ALL_LABELED. Draw 1 is the dataset as given (not drawn
    here)."""
    import random

    if draw == ALL_LABELED:
        return sorted(candidates)
    if draw < 2:
        raise ValueError("draw 1 is the dataset as given")
    return sorted(random.Random(draw).sample(sorted(candidates), n_labeled))


def _read_seg(dataset_json: dict, path: str):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    return determine_reader_writer_from_dataset_json(dataset_json, path)().read_seg(path)[0]


def _image_shape(dataset_json: dict, paths: Sequence[str]) -> tuple:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    return tuple(determine_reader_writer_from_dataset_json(dataset_json, paths[0])().read_images(paths)[0].shape[1:])


def _images_by_case(folder: str, ending: str) -> dict:
    """case -> its channel files (CASE_XXXX<ending>, sorted) in a raw images folder (nnU-Net's own listing starts a
    process pool per call)."""
    import re

    cases = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        match = re.fullmatch(r"(.+)_\d{4}" + re.escape(ending), name)
        if match:
            cases.setdefault(match.group(1), []).append(os.path.join(folder, name))
    return cases


def build_draw(source_raw: str, target: str, draw, labels_folder: str) -> dict:
    """Write the raw dataset `target` (atomically: complete or not at all) for labeled draw `draw` (>= 2, or
    ALL_LABELED) of the raw dataset `source_raw`, which is only read. Returns its record (also written as
    `target`/draw.json).

    The training cases (imagesTr + imagesUnlabeled of the source) are redistributed: as many as the source has
    labeled are drawn (draw_labeled_cases; ALL_LABELED: every one) and go to imagesTr/labelsTr, the others to
    imagesUnlabeled, without their labels. The test set (imagesTs, labelsTs) is the source's, unchanged. The
    source has no labels of its unlabeled pool: those of newly labeled cases come from `labels_folder`
    (`<case><file_ending>`, e.g. labelsTr of a fully labeled conversion of the same data); the labels of the
    source's labeled cases stay the source's and must equal those in `labels_folder` (so it is the same data, at
    the same size). Files are hard-linked (symbolic links across file systems). An existing `target` is kept if it
    holds exactly this draw."""
    import numpy as np

    from nnunet_ssl.data.pool import UNLABELED_RAW_FOLDER
    from nnunet_ssl.utilities.atomic import atomic_folder, link_file

    with open(os.path.join(source_raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    ending = dataset_json["file_ending"]
    if "dataset" in dataset_json:
        raise SplitError(f"{os.path.join(source_raw, 'dataset.json')}: lists its files ('dataset'); draws need the "
                         f"standard layout (imagesTr, labelsTr, {UNLABELED_RAW_FOLDER})")
    labeled = {c: {"images": files, "label": os.path.join(source_raw, "labelsTr", c + ending)}
               for c, files in _images_by_case(os.path.join(source_raw, "imagesTr"), ending).items()}
    unlabeled = _images_by_case(os.path.join(source_raw, UNLABELED_RAW_FOLDER), ending)
    images = {**{c: v["images"] for c, v in labeled.items()}, **unlabeled}
    if set(labeled) & set(unlabeled) or not labeled or not unlabeled:
        raise SplitError(f"{source_raw}: needs labeled (imagesTr) and unlabeled ({UNLABELED_RAW_FOLDER}) cases with "
                         f"different ids, has {len(labeled)} and {len(unlabeled)} ({len(set(labeled) & set(unlabeled))} "
                         f"in both)")
    chosen = draw_labeled_cases(images, len(labeled), draw)
    pool = sorted(set(images) - set(chosen))
    every_case = draw == ALL_LABELED
    record = {"source": os.path.abspath(source_raw), "draw": draw, "seed": None if every_case else draw,
              "rule": f"every case of imagesTr + {UNLABELED_RAW_FOLDER}" if every_case else
              f"random.Random({draw}).sample(sorted(imagesTr + {UNLABELED_RAW_FOLDER} cases), {len(labeled)}), sorted",
              "labeled": chosen, "unlabeled": pool,
              "moved_to_unlabeled": sorted(set(labeled) - set(chosen)),
              "newly_labeled": sorted(set(chosen) - set(labeled)),
              "labels_from": os.path.abspath(labels_folder),
              "test": sorted(f[:-len(ending)] for f in os.listdir(os.path.join(source_raw, "labelsTs"))
                             if f.endswith(ending))}
    record_file = os.path.join(target, DRAW_RECORD)
    if os.path.isfile(record_file):
        with open(record_file) as f:
            existing = json.load(f)
        if (existing.get("labeled"), existing.get("unlabeled"), existing.get("test")) != \
                (record["labeled"], record["unlabeled"], record["test"]):
            raise SplitError(f"{record_file}: this folder holds another draw of other cases than draw {draw} of "
                             f"{source_raw} now gives (the source changed?); use another output folder")
        return existing

    if not os.path.isdir(labels_folder):
        raise SplitError(f"{labels_folder} (labels of the draws) does not exist")
    missing = [c for c in record["newly_labeled"] if not os.path.isfile(os.path.join(labels_folder, c + ending))]
    if missing:
        raise SplitError(f"{labels_folder}: no label of {len(missing)} case(s) draw {draw} labels, e.g. "
                         f"{[c + ending for c in missing[:5]]}; the folder must hold the labels of every training "
                         f"case (imagesTr and {UNLABELED_RAW_FOLDER}) of {source_raw}, e.g. labelsTr of the same "
                         f"source converted without --labeled")
    checked = [c for c in labeled if os.path.isfile(os.path.join(labels_folder, c + ending))]
    if not checked:
        raise SplitError(f"{labels_folder} holds none of the labeled cases of {source_raw} ({sorted(labeled)[:5]}), "
                         f"so it cannot be checked to hold labels of the same images")
    for c in checked:
        theirs = os.path.join(labels_folder, c + ending)
        if not np.array_equal(_read_seg(dataset_json, theirs), _read_seg(dataset_json, labeled[c]["label"])):
            raise SplitError(f"{theirs} differs from {labeled[c]['label']}: {labels_folder} does not hold labels of "
                             f"the same data (another source, or converted at another size?)")
    for c in record["newly_labeled"]:
        label = os.path.join(labels_folder, c + ending)
        shape, image_shape = tuple(_read_seg(dataset_json, label).shape[1:]), _image_shape(dataset_json, images[c])
        if shape != image_shape:
            raise SplitError(f"{label}: shape {shape}, its image {images[c][0]} has shape {image_shape}")

    with atomic_folder(target) as tmp:
        for sub in ("imagesTr", "labelsTr", UNLABELED_RAW_FOLDER, "imagesTs", "labelsTs"):
            os.makedirs(os.path.join(tmp, sub))
        for c in chosen:
            for f in images[c]:
                link_file(f, os.path.join(tmp, "imagesTr", os.path.basename(f)))
            label = labeled[c]["label"] if c in labeled else os.path.join(labels_folder, c + ending)
            link_file(label, os.path.join(tmp, "labelsTr", c + ending))
        for c in pool:
            for f in images[c]:
                link_file(f, os.path.join(tmp, UNLABELED_RAW_FOLDER, os.path.basename(f)))
        for sub in ("imagesTs", "labelsTs"):
            for f in sorted(os.listdir(os.path.join(source_raw, sub))):
                link_file(os.path.join(source_raw, sub, f), os.path.join(tmp, sub, f))
        write_json(os.path.join(tmp, "dataset.json"),
                   {**dataset_json, "numTraining": len(chosen),
                    "description": f"{os.path.basename(source_raw)} with every training case labeled "
                                   f"(nnunet_ssl benchmark --upper-bound; {DRAW_RECORD})" if every_case else
                                   f"draw {draw} of {os.path.basename(source_raw)}: {len(chosen)} other labeled "
                                   f"cases (nnunet_ssl benchmark --draws; {DRAW_RECORD})"})
        write_json(os.path.join(tmp, DRAW_RECORD), record)
    return record
