"""Write a folder completely or not at all: build it in a hidden temporary folder next to the target, then
rename it into place. A failure leaves nothing half-written behind."""
import os
import shutil
import uuid
from contextlib import contextmanager


def new_temp_folder(parent: str, name: str) -> str:
    """Hidden (so nnU-Net's `Dataset*` lookup never sees it), next to the target (same file system, so the
    final rename is atomic)."""
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
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
