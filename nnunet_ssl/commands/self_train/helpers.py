"""Shared helpers of the self-train steps: the command's error, JSON files written atomically and only when changed,
the dataset ids in use in nnU-Net's folders, reading a segmentation with the dataset's reader/writer, a spawn pool
map for the per-case workers, and the folds as command-line arguments."""
import json
import multiprocessing
import os

from nnunet_ssl.utilities.atomic import write_json
from nnunet_ssl.utilities.inputs import UserError


class SelfTrainError(UserError):
    """Bad input or state for `nnunet_ssl self-train`; the message names the file or folder and the fix."""


def _write_json(path: str, content) -> bool:
    """Write atomically, only if the content changed (so a re-run leaves the file and its mtime alone)."""
    if os.path.isfile(path):
        with open(path) as f:
            try:
                if json.load(f) == json.loads(json.dumps(content)):
                    return False
            except ValueError:
                pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, content)  # parts' jobs may write the same file at the same time: one temp file each
    return True


def _load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise SelfTrainError(f"{path}: not valid JSON ({e})")


def _dataset_ids_in_use(*roots) -> dict:
    """id -> folder names, for every Dataset<ddd>* folder in the given nnU-Net roots (nnU-Net's own lookup is a
    prefix match on Dataset%03d)."""
    used = {}
    for root in roots:
        if root and os.path.isdir(root):
            for name in os.listdir(root):
                if name.startswith("Dataset") and name[7:10].isdigit() and os.path.isdir(os.path.join(root, name)):
                    used.setdefault(int(name[7:10]), set()).add(name)
    return used


def _read_seg(path: str, reader_writer: str):
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
    seg, _ = recursive_find_reader_writer_by_name(reader_writer)().read_seg(path)
    return seg[0]


def _map(function, jobs, num_processes: int):
    if num_processes <= 1 or len(jobs) < 2:
        return [function(j) for j in jobs]
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        return list(pool.imap(function, jobs, chunksize=max(1, len(jobs) // (4 * num_processes))))


def _fold_arg(folds) -> list:
    return [str(f) for f in folds]
