"""Run a stock command (nnUNetv2_*, `python -m nnunet_ssl ...`) with its output in a log file, for the
commands that drive whole pipelines (`nnunet_ssl benchmark`, `nnunet_ssl self-train`)."""
import os
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


def run_logged(cmd, log: str, env: dict, error=RuntimeError):
    """Run `cmd`, its output appended to `log`; raise `error` naming the command and the log if it fails.
    Returns (peak RSS of the process in GB, seconds)."""
    cmd = [resolve_command(str(cmd[0]))] + [str(c) for c in cmd[1:]]
    start = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        except FileNotFoundError:
            raise error(f"command not found: {cmd[0]} (is nnU-Net installed in this environment?)")
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's so far
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise error(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\nsee {log}")
    return usage.ru_maxrss / 2 ** 20, time.time() - start  # ru_maxrss is in KiB on Linux
