"""Run a stock command (nnUNetv2_*, `python -m nnunet_ssl ...`) with its output in a log file, for the
commands that drive whole pipelines (`nnunet_ssl benchmark`, `nnunet_ssl self-train`)."""
import os
import re
import subprocess
import sys
import time


def resolve_command(name: str) -> str:
    """The console script `name` of this Python's environment (next to sys.executable) if it has one, so a
    `python -m nnunet_ssl ...` run from a virtual environment that is not activated still calls that
    environment's nnU-Net; otherwise `name` as given (found on PATH)."""
    if os.sep in name:
        return name
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else name


# nnU-Net's trainer logs "<timestamp>: Epoch <n>" when epoch n (0-based) starts
EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")


def follow_epochs(lines, log_file, epochs, desc: str) -> None:
    """Copy a training's output into its log and show its epochs as a progress bar: the output itself goes to
    the log only, and an hour-long training would otherwise show nothing."""
    from tqdm import tqdm

    with tqdm(total=epochs, desc=desc, unit="epoch") as bar:
        for line in lines:
            log_file.write(line)
            started = EPOCH_LINE.search(line)
            if started:  # epochs before this one are done (a --c run starts where its checkpoint was)
                log_file.flush()
                bar.n = int(started.group(1))
                bar.refresh()
        if epochs is not None and bar.n == epochs - 1:
            bar.n = epochs  # the last epoch started, and ended with the command (a failed run shows where it was)
            bar.refresh()


def run_logged(cmd, log: str, env: dict, error=RuntimeError, epochs: int = None, progress: str = None):
    """Run `cmd`, its output appended to `log`; raise `error` naming the command and the log if it fails.
    `progress`: the command is an nnU-Net training; show its epochs (of `epochs`, if known) as a bar with this
    description. Returns (peak RSS of the process in GB, seconds)."""
    cmd = [resolve_command(str(cmd[0]))] + [str(c) for c in cmd[1:]]
    start = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        if progress:  # a child Python writing into a pipe would hold its lines back in its buffer
            env = {**env, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if progress else f, stderr=subprocess.STDOUT, env=env,
                                    text=bool(progress), errors="replace" if progress else None)
        except FileNotFoundError:
            raise error(f"command not found: {cmd[0]} (is nnU-Net installed in this environment?)")
        if progress:
            follow_epochs(proc.stdout, f, epochs, progress)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's so far
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise error(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\nsee {log}")
    return usage.ru_maxrss / 2 ** 20, time.time() - start  # ru_maxrss is in KiB on Linux
