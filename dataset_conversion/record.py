"""The records a conversion writes in the dataset folder: nnU-Net's dataset.json and the split record
`ssl_split.json` (the split, its convention, the list files with their hashes, missing and bad cases)."""
import hashlib
import json
import os
from typing import List, Tuple

from nnunet_ssl.dataset_conversion.core import ConversionPlan, ConvertOptions
from nnunet_ssl.dataset_conversion.jobs import Job
from nnunet_ssl.dataset_conversion.labels import check_consecutive_labels
from nnunet_ssl.dataset_conversion.split import Split


SPLIT_RECORD = "ssl_split.json"


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# dataset.json and the split record


def write_dataset_json(folder: str, plan: ConversionPlan, num_training: int, dataset_name: str) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    check_consecutive_labels(plan.labels)
    generate_dataset_json(folder, channel_names=dict(plan.channel_names), labels=dict(plan.labels),
                          num_training_cases=num_training, file_ending=plan.file_ending,
                          regions_class_order=plan.regions_class_order, dataset_name=dataset_name,
                          description=plan.description or None, reference=plan.reference or None,
                          converted_by=f"nnunet_ssl convert ({plan.converter})",
                          license="see the dataset's original terms of use")


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("nnunet_ssl")
    except Exception:  # not installed as a distribution (source checkout)
        return "unknown"


def write_split_record(path: str, plan: ConversionPlan, split: Split, opts: ConvertOptions,
                       bad: List[Tuple[Job, str]], folder_name: str) -> dict:
    skipped = {job.case.case_id for job, _ in bad}
    kept = lambda ids: [i for i in ids if i not in skipped]  # noqa: E731
    extra = [c.case_id for c in plan.extra_unlabeled if c.case_id not in skipped]
    record = {
        "dataset": folder_name,
        "converter": f"nnunet_ssl.dataset_conversion.{plan.converter}",
        "nnunet_ssl_version": _package_version(),
        "source": os.path.abspath(plan.source),
        "command": opts.command,
        "arguments": opts.arguments,
        "split_convention": split.convention,
        "seed": split.seed,
        "list_files": {role: {"path": p, "sha256": sha256_of(p)} for role, p in split.list_files.items()},
        "training_order": split.training_order,
        "labeled": kept(split.labeled),
        "unlabeled": kept(split.unlabeled),
        "test": kept(split.test),
        "validation": {"cases": kept(split.validation), "written_to": split.validation_to},
        "extra_unlabeled": extra,
        "missing": split.missing,
        "skipped_bad": [{"case": job.case.case_id, "role": job.role, "error": error} for job, error in bad],
        "not_used": split.not_used,
        "notes": plan.notes,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return record
