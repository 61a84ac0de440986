"""Write a folder completely or not at all: build it in a hidden temporary folder next to the target, then
rename it into place. A failure leaves nothing half-written behind.

A run that is killed (kill -9, power loss) cannot remove its temporary folder, so the folder's name carries its
owner, `.<target>.partial-<random>-pid<PID>-<host>`: the next run for the same target removes those whose process
is gone (same host only; a folder of a live process, a concurrent run, is never touched)."""
import json
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager
from typing import List


def host_name() -> str:
    """This machine's name as temporary files and folders carry it (a process id means something on its host only)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def process_exists(pid: int) -> bool:
    """Whether process `pid` runs on this host (what a temporary file or folder named after its writer needs)."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: assume alive (never removed)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp_folders(target: str) -> List[str]:
    """Delete what killed runs for `target` left behind: its temporary folders (and `.old` folders of an
    interrupted replace) whose owning process on this host no longer exists. Returns what was removed."""
    parent, name = os.path.split(os.path.abspath(target))
    if not os.path.isdir(parent):
        return []
    pattern = re.compile(rf"\.{re.escape(name)}\.partial-[0-9a-f]{{8}}-pid(\d+)-([A-Za-z0-9_-]+)(\.old)?")
    removed = []
    for entry in sorted(os.listdir(parent)):
        match = pattern.fullmatch(entry)
        if match and match.group(2) == host_name() and int(match.group(1)) != os.getpid() \
                and not process_exists(int(match.group(1))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(os.path.join(parent, entry))
    return removed


def _write_then_rename(path: str, content, mode: str, **open_args) -> None:
    """A file complete or not at all: a temporary file named after this process (concurrent writers never share
    one), then a rename."""
    tmp = f"{path}.pid{os.getpid()}.tmp"
    with open(tmp, mode, **open_args) as f:
        f.write(content)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    _write_then_rename(path, text, "w", encoding="utf-8")


def write_bytes(path: str, data: bytes) -> None:
    _write_then_rename(path, data, "wb")


def write_json(path: str, content) -> None:
    write_text(path, json.dumps(content, indent=1))


def new_temp_folder(parent: str, name: str) -> str:
    """Hidden (so nnU-Net's `Dataset*` lookup never sees it), next to the target (same file system, so the
    final rename is atomic), named after this process; stale ones of the same target are removed first."""
    os.makedirs(parent, exist_ok=True)
    remove_stale_temp_folders(os.path.join(parent, name))
    path = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}-pid{os.getpid()}-{host_name()}")
    os.makedirs(path)
    return path


def replace_folder(temp: str, target: str) -> None:
    """Put the finished `temp` folder in place of `target`. rename() cannot replace a non-empty folder, so an
    existing target is first renamed aside, then deleted; if the second rename fails it is put back."""
    if not os.path.exists(target):
        os.replace(temp, target)
        return
    old = temp + ".old"
    os.replace(target, old)
    try:
        os.replace(temp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(target: str):
    """`with atomic_folder(target) as temp:` write into temp; on success temp replaces target."""
    temp = new_temp_folder(os.path.dirname(os.path.abspath(target)), os.path.basename(target))
    try:
        yield temp
        replace_folder(temp, target)
    finally:
        if os.path.isdir(temp):
            shutil.rmtree(temp)


def link_file(src: str, dst: str, copy_fallback: bool = False) -> None:
    """Put `src` at `dst` without copying it: a hard link (no extra space; it survives a later rewrite of the
    source path). Across file systems: a symbolic link, or with `copy_fallback` a copy (for small files that
    must outlive their source folder)."""
    src = os.path.realpath(src)
    try:
        os.link(src, dst)
    except OSError:
        if copy_fallback:
            shutil.copy2(src, dst)
        else:
            os.symlink(src, dst)
