"""Case lists and the semi-supervised split: the training / validation / test roles from the converter's
defaults and the list files, the labeled cases (first N of a training list, or of the seeded shuffle), the
unlabeled pool, `--labeled-fraction` / `--test-fraction`, and the absent cases (`--skip-missing`)."""
import math
import random
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

from nnunet_ssl.dataset_conversion.core import ConversionError, ConversionPlan, ConvertOptions


LIST_ROLES = ("train", "validation", "test")
VALIDATION_TARGETS = ("skip", "train", "test", "unlabeled")


# ----------------------------------------------------------------------------------------------------------
# Case lists and the semi-supervised split


def default_list_entry_to_id(entry: str) -> Optional[str]:
    """`ID`, `ID/mri_norm2.h5` or `some/dir/ID/file.h5` -> `ID`."""
    parts = [p for p in entry.replace("\\", "/").split("/") if p]
    if len(parts) > 1 and "." in parts[-1]:
        parts = parts[:-1]
    return parts[-1] if parts else None


def read_case_list(path: str, entry_to_id: Optional[Callable[[str], Optional[str]]] = None) -> List[str]:
    entry_to_id = entry_to_id or default_list_entry_to_id
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: cannot read the case list ({e})") from None
    ids = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        case_id = entry_to_id(entry)
        if not case_id:
            raise ConversionError(f"{path}, line {number}: no case id in {entry!r}")
        ids.append(case_id)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConversionError(f"{path}: cases listed twice: {', '.join(duplicates)}")
    if not ids:
        raise ConversionError(f"{path}: the case list is empty")
    return ids


def seeded_order(case_ids: Iterable[str], seed: int) -> List[str]:
    """The documented seeded shuffle: sorted ids, then `random.Random(seed).shuffle`."""
    order = sorted(case_ids)
    random.Random(seed).shuffle(order)
    return order


def count_from_fraction(fraction: float, total: int, what: str) -> int:
    if not 0 < fraction <= 1:
        raise ConversionError(f"{what} must be in (0, 1], got {fraction}")
    return int(math.floor(fraction * total + 0.5))  # round half up: 5% of 80 = 4, 10% of 62 = 6


def labeled_count(num_training: int, opts: ConvertOptions) -> int:
    if opts.labeled is None and opts.labeled_fraction is None:
        return num_training  # fully supervised: every training case labeled
    n = opts.labeled if opts.labeled is not None else count_from_fraction(
        opts.labeled_fraction, num_training, "--labeled-fraction")
    if not 1 <= n <= num_training:
        raise ConversionError(f"--labeled{'-fraction' if opts.labeled is None else ''} gives {n} labeled cases, but "
                              f"there are {num_training} training cases (need 1..{num_training})")
    return n


@dataclass
class Split:
    labeled: List[str]
    unlabeled: List[str]
    test: List[str]
    validation: List[str]
    validation_to: str
    training_order: List[str]
    convention: str
    seed: Optional[int]
    list_files: Dict[str, str]
    missing: Dict[str, List[str]]
    labeled_absent: List[str]      # cases the labeled rule picked that are absent (--skip-missing)
    not_used: List[str]


def _roles_from_lists(plan: ConversionPlan, list_files: Dict[str, str]) -> Dict[str, List[str]]:
    roles = {"train": list(plan.training), "validation": list(plan.validation), "test": list(plan.test)}
    listed = {role: read_case_list(path, plan.list_entry_to_id) for role, path in list_files.items()}
    every_listed = {i for ids in listed.values() for i in ids}
    for role in LIST_ROLES:
        # a case named in any list keeps only the role its list gives it
        roles[role] = listed[role] if role in listed else [i for i in roles[role] if i not in every_listed]
    return roles


def _check_roles_disjoint(roles: Dict[str, List[str]], list_files: Dict[str, str]) -> None:
    for a, b in (("train", "test"), ("train", "validation"), ("validation", "test")):
        both = sorted(set(roles[a]) & set(roles[b]))
        if both:
            where = " and ".join(list_files.get(r, f"the default {r} set") for r in (a, b))
            raise ConversionError(f"cases in both the {a} and the {b} set ({where}): {', '.join(both[:10])}")


def _training_order(plan: ConversionPlan, opts: ConvertOptions, train: List[str], has_train_list: bool):
    """(training ids in labeled-first order, the convention in words)."""
    if has_train_list:
        return train, "labeled = the first N cases of the training list, in list order (UA-MT / BCP / SGRS-Net)"
    if plan.training_in_order:
        return train, plan.split_description or "labeled = the first N of the converter's training order"
    return seeded_order(train, opts.seed), (f"training ids sorted, shuffled with random.Random({opts.seed})."
                                            f"shuffle; labeled = the first N of that order")


def make_split(plan: ConversionPlan, opts: ConvertOptions) -> Split:
    if opts.validation_to not in VALIDATION_TARGETS:
        raise ConversionError(f"--validation-to must be one of {', '.join(VALIDATION_TARGETS)}")
    list_files = {**plan.list_files, **opts.lists}
    roles = _roles_from_lists(plan, list_files)
    _check_roles_disjoint(roles, list_files)
    order, convention = _training_order(plan, opts, roles["train"], "train" in list_files)
    if opts.test_fraction is not None:
        in_given_order = "train" in list_files or plan.training_in_order
        order, roles["test"] = _take_test_fraction(order, roles["test"], opts, in_given_order)
        convention += f"; test = the first {len(roles['test'])} of the shuffled order (--test-fraction)"
    if opts.validation_to == "train":
        order = order + roles["validation"]  # appended: the first N labeled stay those of the training list
    test = roles["test"] + (roles["validation"] if opts.validation_to == "test" else [])
    n = labeled_count(len(order), opts)
    converted = {"train": order, "test": test}
    if opts.validation_to == "unlabeled":
        converted["validation"] = roles["validation"]
    missing = _missing_cases(plan, converted)
    if missing and not opts.skip_missing:
        raise ConversionError(_missing_message(plan, missing, list_files, converted))
    present = lambda ids: [i for i in ids if i in plan.cases]  # noqa: E731
    return Split(labeled=present(order[:n]), unlabeled=present(order[n:]), test=present(test),
                 validation=present(roles["validation"]), validation_to=opts.validation_to,
                 training_order=order, convention=convention, seed=None if "train" in list_files else opts.seed,
                 list_files=list_files, missing=missing, labeled_absent=[i for i in order[:n] if i not in plan.cases],
                 not_used=sorted(set(plan.cases) - set(order) - set(test) - set(roles["validation"])))


def _take_test_fraction(order, test, opts, in_given_order):
    if test:
        raise ConversionError("--test-fraction: this source already has a test set (leave --test-fraction out, "
                              "or give --test-list)")
    if in_given_order:
        raise ConversionError("--test-fraction cannot be combined with a training list: give --test-list")
    n_test = count_from_fraction(opts.test_fraction, len(order), "--test-fraction")
    if not 1 <= n_test < len(order):
        raise ConversionError(f"--test-fraction {opts.test_fraction} gives {n_test} test cases of {len(order)}")
    return order[n_test:], order[:n_test]


def _missing_cases(plan: ConversionPlan, roles: Dict[str, List[str]]) -> Dict[str, List[str]]:
    missing = {role: [i for i in ids if i not in plan.cases] for role, ids in roles.items()}
    return {role: ids for role, ids in missing.items() if ids}


def _missing_message(plan, missing, list_files, roles) -> str:
    lines = [f"listed cases are absent from {plan.source}:"]
    for role, ids in missing.items():
        origin = list_files.get(role, f"the {role} set")
        shown = ", ".join(f"{i} ({plan.absent_reasons[i]})" if i in plan.absent_reasons else i for i in ids[:8])
        more = f", ... ({len(ids) - 8} more)" if len(ids) > 8 else ""
        lines.append(f"  {origin}: {len(ids)} of {len(roles[role])} absent: {shown}{more}")
    lines.append("Add --skip-missing to convert only the present cases (the split record then lists the absent "
                 "ones; the labeled cases stay the first N of the list, absent ones left out).")
    return "\n".join(lines)
