"""The conversion driver: a plan and the options -> `output_root/DatasetXXX_Name/`, written atomically
(`convert`), or a source written as the test set of an existing dataset (`convert_external_test`); the
target checks, the dataset's folders and the jobs that fill them, the notes and the summary."""
import json
import os
import re
import shutil
import sys
from typing import List, Optional, Sequence, Tuple

from nnunet_ssl.dataset_conversion.core import ConversionError, ConversionPlan, ConvertOptions
from nnunet_ssl.dataset_conversion.jobs import Job, run_jobs
from nnunet_ssl.dataset_conversion.record import SPLIT_RECORD, write_dataset_json, write_split_record
from nnunet_ssl.dataset_conversion.split import Split, _missing_message, make_split, read_case_list
from nnunet_ssl.utilities.atomic import new_temp_folder, replace_folder


# ----------------------------------------------------------------------------------------------------------
# The dataset's folders by role, and the jobs that fill them

ROLE_FOLDERS = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": ("imagesUnlabeled", None),
                "test": ("imagesTs", "labelsTs")}


def _jobs(plan: ConversionPlan, split: Split, root: str) -> List[Job]:
    extra = list(plan.extra_unlabeled)
    if split.validation_to == "unlabeled":
        extra += [plan.cases[i] for i in split.validation]
    by_role = [("labeled", [plan.cases[i] for i in split.labeled]),
               ("unlabeled", [plan.cases[i] for i in split.unlabeled] + extra),
               ("test", [plan.cases[i] for i in split.test])]
    jobs = []
    for role, cases in by_role:
        image_folder, label_folder = ROLE_FOLDERS[role]
        jobs += [Job(c, role, os.path.join(root, image_folder), label_folder and os.path.join(root, label_folder))
                 for c in cases]
    _check_unique_ids(jobs)
    return jobs


def _check_unique_ids(jobs: List[Job]) -> None:
    seen = {}
    for job in jobs:
        if job.case.case_id in seen:
            raise ConversionError(f"case id {job.case.case_id} occurs twice: {seen[job.case.case_id]} and "
                                  f"{job.case.images[0]}")
        seen[job.case.case_id] = job.case.images[0]


# ----------------------------------------------------------------------------------------------------------
# Output folder: target checks, temporary folder, atomic replace


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"-d {dataset_id}: nnU-Net dataset ids are 1..999")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ConversionError(f"--name {name!r}: use letters, digits, '_' and '-' only")
    return f"Dataset{dataset_id:03d}_{name}"


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def check_target(output_root: str, folder_name: str, arguments: dict, overwrite: bool) -> str:
    """Refuse to clobber what this command did not make: another dataset with the same id, or a dataset of
    the same name written by hand or with other arguments (unless --overwrite). Same arguments: re-run."""
    target = os.path.join(output_root, folder_name)
    prefix = folder_name.split("_")[0] + "_"
    if os.path.isdir(output_root):
        for other in sorted(os.listdir(output_root)):
            if other.startswith(prefix) and other != folder_name and os.path.isdir(os.path.join(output_root, other)):
                raise ConversionError(f"{os.path.join(output_root, other)} already uses dataset id "
                                      f"{prefix[7:10]}: choose another -d (nnU-Net needs unique ids)")
    if os.path.exists(target) and not overwrite:
        record = read_json(os.path.join(target, SPLIT_RECORD))
        if record is None:
            raise ConversionError(f"{target} already exists and was not written by `nnunet_ssl convert` (no "
                                  f"{SPLIT_RECORD}): pass --overwrite to replace it")
        if record.get("arguments") != arguments:
            raise ConversionError(f"{target} already exists, converted with other arguments (see its "
                                  f"{SPLIT_RECORD}): pass --overwrite to replace it")
    return target


# ----------------------------------------------------------------------------------------------------------
# The conversion


def convert(plan: ConversionPlan, opts: ConvertOptions) -> str:
    """Plan + options -> `output_root/DatasetXXX_Name/`, written atomically. Returns the dataset folder."""
    folder_name = dataset_folder_name(opts.dataset_id, opts.name or plan.name)
    split = make_split(plan, opts)  # problems with the source first, then with the target
    target = check_target(opts.output_root, folder_name, opts.arguments, opts.overwrite)
    if not split.labeled:
        raise ConversionError(f"{plan.source}: no labeled case is present (labeled cases: "
                              f"{', '.join(split.training_order[:5])} ...)")
    _print_notes(plan, split, opts)
    temp = new_temp_folder(opts.output_root, folder_name)
    try:
        _prepare_folders(temp, split, plan)
        bad = run_jobs(_jobs(plan, split, temp), plan.writer, plan.writer_options, plan.file_ending,
                       opts.num_processes, opts.skip_bad, folder_name)
        num_training = len(set(split.labeled) - {job.case.case_id for job, _ in bad})
        if num_training == 0:
            raise ConversionError("every labeled case was bad (see the list above): nothing to train on")
        write_dataset_json(temp, plan, num_training, folder_name)
        record = write_split_record(os.path.join(temp, SPLIT_RECORD), plan, split, opts, bad, folder_name)
        replace_folder(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _print_summary(target, record, bad)
    return target


def _prepare_folders(root: str, split: Split, plan: ConversionPlan) -> None:
    for folder in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(root, folder))
    if split.unlabeled or plan.extra_unlabeled or (split.validation_to == "unlabeled" and split.validation):
        os.makedirs(os.path.join(root, "imagesUnlabeled"))
    if split.test:
        os.makedirs(os.path.join(root, "imagesTs"))
        os.makedirs(os.path.join(root, "labelsTs"))


def warn(message: str) -> None:
    print(f"nnunet_ssl convert: {message}", file=sys.stderr)


def _print_notes(plan: ConversionPlan, split: Split, opts: ConvertOptions) -> None:
    for note in plan.notes:
        warn(note)
    for role, path in plan.list_files.items():
        if role not in opts.lists:
            warn(f"{role} list: {path} (found next to the data)")
    for role, ids in split.missing.items():
        warn(f"--skip-missing: {len(ids)} {role} case(s) absent, left out: {', '.join(ids[:8])}"
             f"{' ...' if len(ids) > 8 else ''}")
    if split.labeled_absent:
        warn(f"labeled case(s) absent, so fewer labeled cases than asked: {', '.join(split.labeled_absent)}")
    if split.not_used:
        warn(f"{len(split.not_used)} case(s) of the source have no role (in no list, or a skipped subset) and are "
             f"not converted")
    if split.validation and split.validation_to == "skip":
        warn(f"{len(split.validation)} validation case(s) not converted (--validation-to train|test|unlabeled to "
             f"use them)")


def _print_summary(target: str, record: dict, bad: List[Tuple[Job, str]]) -> None:
    if bad:
        warn(f"--skip-bad: {len(bad)} bad case(s) skipped:")
        for job, error in bad:
            print(f"  {job.case.case_id} ({job.role}): {error}", file=sys.stderr)
    n_unlabeled = len(record["unlabeled"]) + len(record["extra_unlabeled"])
    if record["validation"]["written_to"] == "unlabeled":
        n_unlabeled += len(record["validation"]["cases"])
    print(f"{target}: {len(record['labeled'])} labeled (imagesTr), {n_unlabeled} unlabeled (imagesUnlabeled), "
          f"{len(record['test'])} test (imagesTs); split recorded in {SPLIT_RECORD}")


# ----------------------------------------------------------------------------------------------------------
# Writing a source as the (extra) test set of an existing dataset (PH2 -> an ISIC dataset)


def resolve_dataset_folder(output_root: str, spec: str) -> str:
    """`Dataset501_ISIC2018`, `501` or a path -> the existing raw dataset folder."""
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    match = re.fullmatch(r"(?:Dataset)?(\d{1,3})(_.+)?", spec)
    if not match or not os.path.isdir(output_root):
        raise ConversionError(f"{spec}: no such dataset folder (give DatasetXXX_Name, its id, or its path)")
    prefix = f"Dataset{int(match.group(1)):03d}_"
    found = [n for n in sorted(os.listdir(output_root)) if n.startswith(prefix)
             and (match.group(2) is None or n == prefix + match.group(2)[1:])]
    if len(found) != 1:
        raise ConversionError(f"{spec}: {'no' if not found else 'several'} matching dataset folder(s) in "
                              f"{output_root}{': ' + ', '.join(found) if found else ''}")
    return os.path.join(output_root, found[0])


def _check_compatible(dataset: str, plan: ConversionPlan) -> dict:
    dataset_json = read_json(os.path.join(dataset, "dataset.json"))
    if dataset_json is None:
        raise ConversionError(f"{os.path.join(dataset, 'dataset.json')}: missing or unreadable")
    label_values = lambda labels: sorted(v for v in labels.values() if not isinstance(v, (list, tuple)))  # noqa
    problems = []
    if dataset_json.get("file_ending") != plan.file_ending:
        problems.append(f"file_ending {dataset_json.get('file_ending')!r} (this converter writes "
                        f"{plan.file_ending!r})")
    if len(dataset_json.get("channel_names", {})) != len(plan.channel_names):
        problems.append(f"{len(dataset_json.get('channel_names', {}))} channels (this converter writes "
                        f"{len(plan.channel_names)})")
    if label_values(dataset_json.get("labels", {})) != label_values(plan.labels):
        problems.append(f"labels {dataset_json.get('labels')} (this converter writes {plan.labels})")
    if problems:
        raise ConversionError(f"{os.path.join(dataset, 'dataset.json')}: cannot hold {plan.name} as its test set: "
                              + "; ".join(problems))
    return dataset_json


def _check_test_folders_free(dataset: str, folders: Sequence[str], record: Optional[dict], overwrite: bool,
                             suffix_hint: str) -> None:
    """An existing imagesTs/labelsTs may be replaced only if it holds what an earlier run of this command wrote
    (re-run) or with --overwrite: it may hold the dataset's own test set."""
    ours = set(record.get("files", [])) if record else set()
    for folder in folders:
        path = os.path.join(dataset, folder)
        foreign = sorted(set(os.listdir(path)) - ours) if os.path.isdir(path) else []
        if foreign and not overwrite:
            raise ConversionError(f"{path} already holds {len(foreign)} file(s) this command did not write (e.g. "
                                  f"{foreign[0]}): use --test-folder-suffix {suffix_hint} to write separate "
                                  f"folders, or --overwrite to replace them")


def convert_external_test(plan: ConversionPlan, opts: ConvertOptions, target_spec: str, suffix: str = "") -> str:
    """Write every case of `plan` (or those of --test-list) as `imagesTs<suffix>/labelsTs<suffix>` of an existing
    dataset, e.g. PH2 as the external test set of a model trained on ISIC. The dataset's training data,
    dataset.json and split record are not touched; `external_test_<Name><suffix>.json` records what was done.
    A `--max-size` recorded by the dataset's own conversion is reused unless given."""
    if opts.labeled is not None or opts.labeled_fraction is not None or opts.test_fraction is not None:
        raise ConversionError("--labeled / --labeled-fraction / --test-fraction have no meaning with "
                              "--as-test-set-of (every case is a test case)")
    dataset = resolve_dataset_folder(opts.output_root, target_spec)
    _check_compatible(dataset, plan)
    folders = ("imagesTs" + suffix, "labelsTs" + suffix)
    record_path = os.path.join(dataset, f"external_test_{plan.name}{suffix}.json")
    _check_test_folders_free(dataset, folders, read_json(record_path), opts.overwrite, f"_{plan.name}")
    options = _inherit_max_size(plan.writer_options, dataset)
    test = plan.training + plan.test
    if "test" in opts.lists:
        test = read_case_list(opts.lists["test"], plan.list_entry_to_id)
    missing = [i for i in test if i not in plan.cases]
    if missing and not opts.skip_missing:
        raise ConversionError(_missing_message(plan, {"test": missing}, opts.lists, {"test": test}))
    temp = new_temp_folder(dataset, "external_test")
    try:
        jobs = [Job(plan.cases[i], "test", os.path.join(temp, folders[0]), os.path.join(temp, folders[1]))
                for i in test if i in plan.cases]
        for folder in folders:
            os.makedirs(os.path.join(temp, folder))
        bad = run_jobs(jobs, plan.writer, options, plan.file_ending, opts.num_processes, opts.skip_bad,
                       os.path.basename(dataset) + "/" + folders[0])
        written = sorted(n for f in folders for n in os.listdir(os.path.join(temp, f)))
        record = {"dataset": os.path.basename(dataset), "converter": f"nnunet_ssl.dataset_conversion.{plan.converter}",
                  "source": os.path.abspath(plan.source), "command": opts.command, "arguments": opts.arguments,
                  "writer_options": options, "folders": list(folders),
                  "test": [j.case.case_id for j in jobs if j.case.case_id not in {b.case.case_id for b, _ in bad}],
                  "missing": missing, "skipped_bad": [{"case": j.case.case_id, "error": e} for j, e in bad],
                  "files": written}
        with open(os.path.join(temp, "record.json"), "w") as f:
            json.dump(record, f, indent=1)
        for folder in folders:
            replace_folder(os.path.join(temp, folder), os.path.join(dataset, folder))
        os.replace(os.path.join(temp, "record.json"), record_path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    _print_summary_external(dataset, folders, record_path, record, bad)
    return dataset


def _inherit_max_size(options: dict, dataset: str) -> dict:
    if "max_size" not in options or options["max_size"]:
        return options
    recorded = (read_json(os.path.join(dataset, SPLIT_RECORD)) or {}).get("arguments", {}).get("max_size")
    if recorded:
        warn(f"--max-size {recorded}, as recorded in {os.path.join(dataset, SPLIT_RECORD)}")
        return {**options, "max_size": recorded}
    return options


def _print_summary_external(dataset: str, folders: Sequence[str], record_path: str, record: dict, bad) -> None:
    for job, error in bad:
        warn(f"--skip-bad: skipped {job.case.case_id}: {error}")
    print(f"{dataset}: {len(record['test'])} test cases in {folders[0]}/ and {folders[1]}/; recorded in "
          f"{os.path.basename(record_path)}")
