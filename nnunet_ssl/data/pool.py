"""The unlabeled pool: raw `imagesUnlabeled/`, preprocessed with the labeled dataset's plans.

Layout (nothing of nnU-Net's own files is touched, so fingerprint, plans and splits stay those of the
labeled cases):
    nnUNet_raw/DatasetXXX/imagesUnlabeled/CASE_0000.<ending>, CASE_0001.<ending>, ...
    nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/CASE.b2nd (+ CASE.pkl) and pool.json
pool.json records which plans made the pool (a hash of what preprocessing depends on), so a trainer refuses
a pool made with other plans instead of training on differently normalised data.
"""
import hashlib
import json
import multiprocessing
import os
import re
from collections import defaultdict
from typing import Dict, List, Sequence

from tqdm import tqdm

from nnunet_ssl.utilities.atomic import atomic_folder

UNLABELED_RAW_FOLDER = "imagesUnlabeled"
POOL_MANIFEST = "pool.json"


class UnlabeledPoolError(RuntimeError):
    """Bad or missing unlabeled pool; the message names the file or folder and the fix."""


def preprocessed_pool_folder(preprocessed_dataset_folder_base: str, data_identifier: str) -> str:
    return os.path.join(preprocessed_dataset_folder_base, data_identifier + "_unlabeled")


def preprocess_command(dataset_name: str, configuration: str, plans_identifier: str = "nnUNetPlans") -> str:
    cmd = f"nnunet_ssl preprocess-unlabeled -d {dataset_name} -c {configuration}"
    return cmd if plans_identifier == "nnUNetPlans" else cmd + f" -p {plans_identifier}"


def plans_signature(plans: dict, configuration: str) -> str:
    """Hash of everything in the plans that changes how a case is preprocessed."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(configuration)
    relevant = {
        "configuration": cm.configuration,
        "transpose_forward": plans.get("transpose_forward"),
        "foreground_intensity_properties_per_channel": plans.get("foreground_intensity_properties_per_channel"),
        "image_reader_writer": plans.get("image_reader_writer"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _expected_channel_suffixes(raw_dataset_folder: str, dataset_json: dict) -> List[str]:
    """Channel suffixes (`_0000`, ...) one case has in imagesTr: the unlabeled cases must have the same."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    cases = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    if not cases:
        raise UnlabeledPoolError(f"{raw_dataset_folder}: no labeled training cases found (imagesTr is empty?)")
    first = next(iter(cases.values()))["images"]
    ending = dataset_json["file_ending"]
    return sorted(os.path.basename(f)[: -len(ending)][-5:] for f in first)


def find_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Case id -> image files (channel order), with every naming problem reported by file name."""
    folder = os.path.join(raw_dataset_folder, UNLABELED_RAW_FOLDER)
    if not os.path.isdir(folder):
        raise UnlabeledPoolError(
            f"{folder} does not exist. Put the unlabeled images there, named like imagesTr "
            f"(CASE_0000{dataset_json['file_ending']}, ...).")
    ending = dataset_json["file_ending"]
    suffixes = _expected_channel_suffixes(raw_dataset_folder, dataset_json)
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
    return {case: [os.path.join(folder, case + s + ending) for s in suffixes] for case in sorted(by_case)}


def _preprocess_one(args):
    """Worker: preprocess one unlabeled case exactly as nnU-Net preprocesses a labeled one (no seg)."""
    case, image_files, out_folder, plans, configuration, dataset_json = args
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(configuration)
    try:
        preprocessor = cm.preprocessor_class(verbose=False)
        data, seg, properties = preprocessor.run_case(image_files, None, plans_manager, cm, dataset_json)
    except Exception as e:  # name the file: nnU-Net's readers often do not
        raise UnlabeledPoolError(f"{image_files[0]}: could not be read or preprocessed: {type(e).__name__}: {e}")
    n_channels = len(dataset_json["channel_names"])
    if data.shape[0] != n_channels:
        raise UnlabeledPoolError(f"{image_files[0]}: image has {data.shape[0]} channel(s), dataset.json "
                                 f"channel_names lists {n_channels}")
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


def preprocess_unlabeled(dataset_name_or_id, configurations: Sequence[str], plans_identifier: str = "nnUNetPlans",
                         num_processes: int = 2, overwrite: bool = False, verbose: bool = True) -> List[str]:
    """Preprocess imagesUnlabeled/ with the labeled dataset's plans, one pool per configuration.

    Writes into a temporary folder and moves it into place when complete; an up-to-date pool is kept."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    raw_folder = os.path.join(nnUNet_raw, dataset_name)
    pre_base = os.path.join(nnUNet_preprocessed, dataset_name)
    plans_file = os.path.join(pre_base, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise UnlabeledPoolError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} "
                                 f"first (the pool is preprocessed with the labeled dataset's plans).")
    with open(plans_file) as f:
        plans = json.load(f)
    with open(os.path.join(pre_base, "dataset.json")) as f:
        dataset_json = json.load(f)
    cases = find_unlabeled_cases(raw_folder, dataset_json)
    stamps = {c: _file_stamp(files) for c, files in cases.items()}

    written = []
    for configuration in configurations:
        if configuration not in plans["configurations"]:
            raise UnlabeledPoolError(f"{plans_file}: has no configuration '{configuration}' "
                                     f"(available: {sorted(plans['configurations'])})")
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
        out = preprocessed_pool_folder(pre_base, data_identifier)
        manifest = {"dataset": dataset_name, "plans_identifier": plans_identifier, "configuration": configuration,
                    "plans_signature": plans_signature(plans, configuration), "cases": stamps}
        manifest_file = os.path.join(out, POOL_MANIFEST)
        if not overwrite and os.path.isfile(manifest_file):
            with open(manifest_file) as f:
                if json.load(f) == json.loads(json.dumps(manifest)):
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
