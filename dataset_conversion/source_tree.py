"""Finding things in a source tree: the helpers the dataset modules use to discover their files (folders
found at any depth, case-insensitive names, the literature's split list files, channel suffixes)."""
import os
import re
from typing import Dict, Iterable, List, Optional

from nnunet_ssl.dataset_conversion.core import ConversionError


# ----------------------------------------------------------------------------------------------------------
# Finding things in a source tree


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise ConversionError(f"{path}: {what} does not exist (or is not a folder)")
    return path


def subdirs(folder: str) -> List[str]:
    """Sorted names of the sub-folders (hidden ones and macOS `__MACOSX` left out)."""
    return sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))
                  and not n.startswith(".") and n != "__MACOSX")


def files_matching(folder: str, pattern: str) -> List[str]:
    """Sorted names of the files in `folder` whose whole name matches `pattern` (case-insensitive); stray files
    (desktop.ini, CSVs, *_superpixels.png, ...) simply do not match."""
    regex = re.compile(pattern, re.IGNORECASE)
    return sorted(n for n in os.listdir(folder) if regex.fullmatch(n) and os.path.isfile(os.path.join(folder, n)))


def find_named_folder(root: str, pattern: str, max_depth: int = 2) -> Optional[str]:
    """The folder under `root` (root itself included, down to `max_depth` levels) whose name fully matches
    `pattern` (case-insensitive): downloads are unpacked at different depths. A folder that only holds one
    folder of the same name (a zip unpacked into a folder of its own name) is entered."""
    regex = re.compile(pattern, re.IGNORECASE)
    level = [root]
    for _ in range(max_depth + 1):
        hits = [p for p in level if regex.fullmatch(os.path.basename(os.path.normpath(p)))]
        if len(hits) > 1:
            raise ConversionError(f"{root}: several folders match {pattern!r}: {', '.join(sorted(hits))}")
        if hits:
            return _enter_doubled_folder(hits[0])
        level = [os.path.join(p, n) for p in level for n in subdirs(p)]
    return None


def _enter_doubled_folder(folder: str) -> str:
    inner = subdirs(folder)
    only_file_names = [n for n in os.listdir(folder) if not n.startswith(".")]
    if len(inner) == 1 and only_file_names == inner and inner[0].lower() == os.path.basename(folder).lower():
        return os.path.join(folder, inner[0])
    return folder


def find_file_ci(folder: str, name: str) -> str:
    """`folder/name`, matching the name case-insensitively (`_Segmentation.png` vs `_segmentation.png`);
    the exact path is returned when nothing matches, so the error names what was expected."""
    exact = os.path.join(folder, name)
    if os.path.isfile(exact) or not os.path.isdir(folder):
        return exact
    lower = name.lower()
    for n in os.listdir(folder):
        if n.lower() == lower:
            return os.path.join(folder, n)
    return exact


LIST_FILE_NAMES = {"train": ("train.list", "train.txt"), "validation": ("val.list", "val.txt"),
                   "test": ("test.list", "test.txt")}


def find_split_lists(folders: Iterable[str]) -> Dict[str, str]:
    """The literature's split list files (train.list, test.list, ...) in the first of `folders` holding one."""
    found = {}
    for role, names in LIST_FILE_NAMES.items():
        for folder in folders:
            hits = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
            if hits:
                found[role] = os.path.abspath(hits[0])
                break
    return found


def strip_channel_suffix(file_name: str, ending: str) -> str:
    """`CASE_0000.nii.gz` -> `CASE` (and `CASE.nii.gz` -> `CASE`)."""
    stem = file_name[: -len(ending)] if file_name.lower().endswith(ending.lower()) else file_name
    return re.sub(r"_0000$", "", stem)


def nifti_ending_of(file_name: str) -> Optional[str]:
    lower = file_name.lower()
    for ending in (".nii.gz", ".nii"):
        if lower.endswith(ending):
            return ending
    return None
