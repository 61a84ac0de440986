"""Running the cases: one job per case, written in worker processes (`-np`) with a progress bar; the first bad
case stops the run, or with `--skip-bad` the bad cases are collected."""
import multiprocessing
import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from nnunet_ssl.dataset_conversion.core import Case, ConversionError


# ----------------------------------------------------------------------------------------------------------
# Running the cases: jobs, workers, progress bar, --skip-bad


@dataclass(frozen=True)
class Job:
    case: Case
    role: str              # labeled | unlabeled | test
    image_folder: str
    label_folder: Optional[str]


def _run_job(payload) -> Tuple[int, Optional[str]]:
    index, job, writer, options, ending = payload
    label_path = os.path.join(job.label_folder, job.case.case_id + ending) if job.label_folder else None
    try:
        writer(job.case, os.path.join(job.image_folder, job.case.case_id), label_path, options)
    except ConversionError as e:
        return index, str(e)
    return index, None


def run_jobs(jobs: List[Job], writer: Callable, options: dict, ending: str, num_processes: int,
             skip_bad: bool, desc: str) -> List[Tuple[Job, str]]:
    """Write every job (in `num_processes` worker processes when > 1). The first bad case stops the run with
    its ConversionError; with `skip_bad` bad cases are collected and returned instead."""
    from tqdm import tqdm

    payloads = [(i, job, writer, options, ending) for i, job in enumerate(jobs)]
    bad = []
    with tqdm(total=len(jobs), desc=desc, unit="case", file=sys.stderr) as bar:
        for index, error in _results(payloads, num_processes):
            bar.update()
            if error is None:
                continue
            if not skip_bad:
                raise ConversionError(f"case {jobs[index].case.case_id}: {error}")
            bad.append((jobs[index], error))
    return sorted(bad, key=lambda b: b[0].case.case_id)


def _results(payloads, num_processes: int):
    if num_processes <= 1 or len(payloads) <= 1:
        yield from map(_run_job, payloads)
        return
    # spawn: workers start clean (no inherited threads or locks); the writers are module-level functions
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(payloads))) as pool:
        yield from pool.imap_unordered(_run_job, payloads)
