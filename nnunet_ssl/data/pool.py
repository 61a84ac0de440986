"""The unlabeled pool: raw `imagesUnlabeled/`, preprocessed with the labeled dataset's plans.

Layout (nothing of nnU-Net's own files is touched, so fingerprint, plans and splits stay those of the
labeled cases):
    nnUNet_raw/DatasetXXX/imagesUnlabeled/CASE_0000.<ending>, CASE_0001.<ending>, ...
    nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/CASE.b2nd (+ CASE.pkl) and pool.json
pool.json records a hash of exactly what preprocessing depends on, so a trainer refuses a pool preprocessed
otherwise instead of training on differently normalised data, and plans that preprocess alike (the default and
the ResEnc plans' 2d/3d_fullres, same data identifier) share one pool.
"""
import hashlib
import json
import multiprocessing
import os
import re
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from nnunet_ssl.utilities.atomic import atomic_folder, remove_stale_temp_folders
from nnunet_ssl.utilities.inputs import UserError

UNLABELED_RAW_FOLDER = "imagesUnlabeled"
POOL_MANIFEST = "pool.json"


class UnlabeledPoolError(UserError):
    """Bad or missing unlabeled pool; the message names the file or folder and the fix."""


def preprocessed_pool_folder(preprocessed_dataset_folder_base: str, data_identifier: str) -> str:
    return os.path.join(preprocessed_dataset_folder_base, data_identifier + "_unlabeled")


def preprocess_command(dataset_name: str, configuration: str, plans_identifier: str = "nnUNetPlans") -> str:
    cmd = f"nnunet_ssl preprocess-unlabeled -d {dataset_name} -c {configuration}"
    return cmd if plans_identifier == "nnUNetPlans" else cmd + f" -p {plans_identifier}"


# What DefaultPreprocessor.run_case reads from a configuration (the reader, transpose, crop, normalise,
# resample); batch size, patch size (only the b2nd chunking), network, batch dice do not change a case.
PREPROCESSING_KEYS = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
                      "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                      "resampling_fn_seg_kwargs")
PREPROCESSING_PLANS_KEYS = ("image_reader_writer", "transpose_forward", "foreground_intensity_properties_per_channel")
POOL_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")  # the default of preprocess-unlabeled: those in the plans


def plans_signature(plans: dict, configuration: str) -> str:
    """Hash of exactly what preprocessing a case depends on: plans (and configurations, e.g. the default and the
    ResEnc plans' 3d_fullres) that preprocess identically share one pool, any difference means another pool."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(configuration)
    relevant = {key: cm.configuration.get(key) for key in PREPROCESSING_KEYS}
    relevant.update({key: plans.get(key) for key in PREPROCESSING_PLANS_KEYS})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _labeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    cases = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    if not cases:
        raise UnlabeledPoolError(f"{raw_dataset_folder}: no labeled training cases found (imagesTr is empty?)")
    return {str(case): list(files["images"]) for case, files in cases.items()}


def find_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Case id -> image files (channel order), with every naming problem reported by file name."""
    folder = os.path.join(raw_dataset_folder, UNLABELED_RAW_FOLDER)
    if not os.path.isdir(folder):
        raise UnlabeledPoolError(
            f"{folder} does not exist. Put the unlabeled images there, named like imagesTr "
            f"(CASE_0000{dataset_json['file_ending']}, ...).")
    ending = dataset_json["file_ending"]
    labeled = _labeled_cases(raw_dataset_folder, dataset_json)
    # channel suffixes (`_0000`, ...) of one imagesTr case: the unlabeled cases must have the same
    suffixes = sorted(os.path.basename(f)[: -len(ending)][-5:] for f in next(iter(labeled.values())))
    by_case: Dict[str, List[str]] = defaultdict(list)
    problems = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue  # .DS_Store and friends
        path = os.path.join(folder, name)
        if not name.endswith(ending):
            problems.append(f"{path}: file ending is not '{ending}' (dataset.json file_ending)")
            continue
        match = re.fullmatch(r"(.+)_(\d{4})", name[: -len(ending)])
        if match is None:
            problems.append(f"{path}: name must be CASE_XXXX{ending} with a 4-digit channel index")
            continue
        by_case[match.group(1)].append("_" + match.group(2))
    for case, found in by_case.items():
        if sorted(found) != suffixes:
            problems.append(f"{os.path.join(folder, case)}: has channel files {sorted(found)}, imagesTr cases have "
                            f"{suffixes}")
    if problems:
        raise UnlabeledPoolError("Bad files in the unlabeled pool:\n  " + "\n  ".join(problems))
    if not by_case:
        raise UnlabeledPoolError(f"{folder} is empty: no unlabeled image ending in '{ending}'.")
    clash = sorted(set(by_case) & set(labeled))
    if clash:  # one id would name two cases (the pool's and the split's); rename before any work is done
        pairs = "\n  ".join(f"{os.path.join(folder, c + suffixes[0] + ending)} and {labeled[c][0]}" for c in clash)
        raise UnlabeledPoolError(f"{folder}: case ids {clash} are also labeled cases (imagesTr); rename the "
                                 f"unlabeled files:\n  {pairs}")
    return {case: [os.path.join(folder, case + s + ending) for s in suffixes] for case in sorted(by_case)}


MAX_RESAMPLED_VOXELS = 2 ** 31  # per channel (8 GiB as float32): beyond this the spacing is surely wrong


def _check_raw_image(image_files: Sequence[str], data, properties: dict, plans_manager, cm, dataset_json: dict):
    """What would otherwise fail deep inside preprocessing (IndexError, zero-size array, MemoryError) or pass
    silently (NaN voxels -> a NaN pool -> a NaN loss): checked on the image as the dataset's reader returns it."""
    import numpy as np
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    names = list(dataset_json["channel_names"].values())
    if data.shape[0] != len(names):
        hint = ""
        if data.shape[0] == 4 and dataset_json["file_ending"] in (".png", ".bmp", ".tif") and len(names) in (1, 3):
            hint = (f"; an RGBA image (colour + alpha): drop the alpha channel, e.g. with PIL's "
                    f".convert('{'RGB' if len(names) == 3 else 'L'}')")
        raise UnlabeledPoolError(f"{image_files[0]}: image has {data.shape[0]} channel(s), dataset.json "
                                 f"channel_names lists {len(names)} ({', '.join(map(str, names))}){hint}")
    # the sum (float64: no overflow) is finite if and only if every voxel is; no mask of the image's size needed
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data.sum(dtype=np.float64)):
        bad = ~np.isfinite(data.reshape(data.shape[0], -1))
        channels = [c for c in range(data.shape[0]) if bad[c].any()]
        files = [image_files[c] for c in channels] if len(image_files) == data.shape[0] else list(image_files)
        raise UnlabeledPoolError(f"{', '.join(files)}: {int(bad.sum())} of {data.size} voxels are NaN or infinite "
                                 f"(nnU-Net's normalisation would make the whole case NaN); fix or remove the image")
    spacing = [float(s) for s in properties["spacing"]]
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise UnlabeledPoolError(f"{image_files[0]}: spacing {spacing} is not a positive number on every axis")
    transpose = plans_manager.transpose_forward
    original_spacing = [spacing[i] for i in transpose]
    shape = [data.shape[1:][i] for i in transpose]
    target = list(cm.spacing)
    if len(target) < len(shape):  # 2d: the spacing between slices is kept, as in DefaultPreprocessor
        target = [original_spacing[0]] + target
    new_shape = [int(n) for n in compute_new_shape(shape, original_spacing, target)]
    if min(new_shape) < 1 or np.prod(new_shape, dtype=float) > MAX_RESAMPLED_VOXELS:
        raise UnlabeledPoolError(
            f"{image_files[0]}: spacing {tuple(spacing)} (shape {tuple(data.shape[1:])}) would resample to shape "
            f"{tuple(new_shape)} at the plans' target spacing {tuple(target)} (labeled cases: median spacing "
            f"{tuple(plans_manager.original_median_spacing_after_transp)}); the file's spacing is wrong (unit?)")


def _preprocess_one(args):
    """Worker: preprocess one unlabeled case exactly as nnU-Net preprocesses a labeled one (no seg)."""
    case, image_files, out_folder, plans, configuration, dataset_json = args
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(configuration)
    try:  # name the file: nnU-Net's readers often do not
        data, properties = plans_manager.image_reader_writer_class().read_images(image_files)
    except Exception as e:
        raise UnlabeledPoolError(f"{image_files[0]}: could not be read: {type(e).__name__}: {e}")
    _check_raw_image(image_files, data, properties, plans_manager, cm, dataset_json)
    try:
        preprocessor = cm.preprocessor_class(verbose=False)
        if type(preprocessor).run_case is DefaultPreprocessor.run_case:  # read once (run_case = read + run_case_npy)
            data, seg, properties = preprocessor.run_case_npy(data, None, properties, plans_manager, cm, dataset_json)
        else:
            data, seg, properties = preprocessor.run_case(image_files, None, plans_manager, cm, dataset_json)
    except Exception as e:
        raise UnlabeledPoolError(f"{image_files[0]}: could not be preprocessed: {type(e).__name__}: {e}")
    properties["class_locations"] = {}  # no labels: the pool is sampled uniformly
    data = data.astype("float32", copy=False)
    seg = seg.astype("int16", copy=False)  # only the nonzero-mask (-1/0) that crop_to_nonzero made
    blocks, chunks = comp_blosc2_params(data.shape, tuple(cm.patch_size), data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(cm.patch_size), seg.itemsize)
    nnUNetDatasetBlosc2.save_case(data, seg, properties, os.path.join(out_folder, case), chunks=chunks,
                                  blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    return case


def _file_stamp(files: Sequence[str]) -> List:
    return [[os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]


def preprocess_unlabeled(dataset_name_or_id, configurations: Optional[Sequence[str]] = None,
                         plans_identifier: str = "nnUNetPlans", num_processes: int = 2, overwrite: bool = False,
                         verbose: bool = True) -> List[str]:
    """Preprocess imagesUnlabeled/ with the labeled dataset's plans, one pool per configuration (default: those of
    2d, 3d_fullres, 3d_lowres the plans have). Everything is checked before anything is written.

    Writes into a temporary folder and moves it into place when complete; an up-to-date pool is kept."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ssl.utilities.inputs import dataset_name as find_dataset, nnunet_folder

    dataset_name = find_dataset(dataset_name_or_id, needs=("nnUNet_raw", "nnUNet_preprocessed"))
    raw_folder = os.path.join(nnunet_folder("nnUNet_raw"), dataset_name)
    pre_base = os.path.join(nnunet_folder("nnUNet_preprocessed"), dataset_name)
    plans_file = os.path.join(pre_base, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise UnlabeledPoolError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} "
                                 f"first (the pool is preprocessed with the labeled dataset's plans).")
    with open(plans_file) as f:
        plans = json.load(f)
    if configurations is None:
        configurations = [c for c in POOL_CONFIGURATIONS if c in plans["configurations"]]
    missing = [c for c in configurations if c not in plans["configurations"]]
    if missing or not configurations:
        raise UnlabeledPoolError(f"{plans_file}: has no configuration {', '.join(map(repr, missing)) or 'to use'} "
                                 f"(available: {', '.join(sorted(plans['configurations']))})")
    with open(os.path.join(pre_base, "dataset.json")) as f:
        dataset_json = json.load(f)
    cases = find_unlabeled_cases(raw_folder, dataset_json)
    stamps = {c: _file_stamp(files) for c, files in cases.items()}

    written = []
    for configuration in configurations:
        out = preprocessed_pool_folder(pre_base, PlansManager(plans).get_configuration(configuration).data_identifier)
        manifest = {"dataset": dataset_name, "plans_identifier": plans_identifier, "configuration": configuration,
                    "plans_signature": plans_signature(plans, configuration), "cases": stamps}
        if not overwrite and _up_to_date(out, manifest):
            remove_stale_temp_folders(out)
            if verbose:
                print(f"{out}: up to date ({len(cases)} cases), nothing to do")
            written.append(out)
            continue
        with atomic_folder(out) as tmp:
            jobs = [(c, files, tmp, plans, configuration, dataset_json) for c, files in cases.items()]
            desc = f"Preprocessing unlabeled pool ({configuration})"
            if num_processes <= 1:
                for job in tqdm(jobs, desc=desc, disable=not verbose):
                    _preprocess_one(job)
            else:
                with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                    for _ in tqdm(pool.imap_unordered(_preprocess_one, jobs), total=len(jobs), desc=desc,
                                  disable=not verbose):
                        pass
            with open(os.path.join(tmp, POOL_MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1)
        if verbose:
            print(f"{out}: {len(cases)} unlabeled cases")
        written.append(out)
    from nnunet_ssl.data.splits import ensure_splits, labeled_case_ids
    message = ensure_splits(pre_base, labeled_case_ids(raw_folder, dataset_json), cases)
    if verbose:
        print(message)
    return written


def _up_to_date(pool_folder: str, manifest: dict) -> bool:
    """Same cases (names, sizes, times) preprocessed the same way; which plans made it does not matter."""
    try:
        with open(os.path.join(pool_folder, POOL_MANIFEST)) as f:
            existing = json.load(f)
    except (OSError, ValueError):
        return False
    return all(existing.get(k) == json.loads(json.dumps(manifest[k])) for k in ("plans_signature", "cases"))


def check_pool(pool_folder: str, plans: dict, configuration: str, dataset_name: str, plans_identifier: str) -> int:
    """Fail fast, naming the folder and the command that makes it, unless the pool matches these plans."""
    command = preprocess_command(dataset_name, configuration, plans_identifier)
    manifest_file = os.path.join(pool_folder, POOL_MANIFEST)
    if not os.path.isfile(manifest_file):
        raise UnlabeledPoolError(f"Unlabeled pool not found: {pool_folder} does not exist (or is incomplete). "
                                 f"Semi-supervised trainers need it. Create it with:\n    {command}")
    with open(manifest_file) as f:
        manifest = json.load(f)
    if manifest.get("plans_signature") != plans_signature(plans, configuration):
        raise UnlabeledPoolError(f"{pool_folder} was preprocessed with other plans than the ones this training uses "
                                 f"(plans changed since?). Re-create it with:\n    {command}")
    return len(manifest["cases"])
