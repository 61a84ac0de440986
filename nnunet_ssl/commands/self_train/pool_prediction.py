"""Step 2, predict: the original dataset's imagesUnlabeled/ with nnUNetv2_predict (the ensemble of the folds, and each
fold alone for --filter disagreement) into <folder>.partial/ with --continue_prediction, only this run's part with
--num-parts/--part-id (once a part's job ran, the main run waits for every part instead of predicting their
cases itself); when every pool case has a prediction, each file is checked to read as a label map of the
dataset's labels and the folder renamed to its final name. `PoolPredictionStep` is a mixin of `SelfTraining`: its
methods use the settings and the path helpers set up there (self.pool, self.num_parts, self.part_id,
self.label_values, self._pseudo_folder, self._member_folder, ...). `_check_one` is the worker of the check."""
import os

from nnunet_ssl.utilities.runner import run_logged

from .helpers import SelfTrainError, _fold_arg, _load_json, _map, _read_seg, _write_json

PARTS_SUFFIX = ".parts.json"  # next to a pool prediction that part jobs (--num-parts/--part-id) are filling


def _check_one(job):
    """Worker: (case, None or a problem) for one predicted segmentation."""
    import numpy as np
    case, path, reader_writer, allowed = job
    try:
        values = set(np.unique(_read_seg(path, reader_writer)).tolist())
    except Exception as e:  # a file cut short by a killed job, ...
        return case, f"unreadable ({type(e).__name__}: {e})"
    unknown = sorted(values - set(allowed))
    return case, (f"label values {unknown} are not in dataset.json labels" if unknown else None)


class PoolPredictionStep:
    def _predictions(self, k: int):
        """(final folder, folds, log name) of every prediction round k needs: the ensemble, then the members."""
        jobs = [(self._pseudo_folder(k), self.folds, f"predict_round_{k}")]
        if self.filter == "disagreement":
            jobs += [(self._member_folder(k, f), [f], f"predict_round_{k}_fold_{f}") for f in self.folds]
        return jobs

    def _predicted(self, k: int) -> bool:
        return all(os.path.isdir(folder) for folder, _, _ in self._predictions(k))

    def _missing(self, folder: str, cases) -> list:
        return [c for c in cases if not os.path.isfile(os.path.join(folder, c + self.ending))]

    def _predict(self, k: int, model: str, final: str, folds, log_name: str) -> bool:
        """One prediction of the pool (or of this run's part); True when `final` is complete."""
        tag = f"round {k}"
        what = f"{model} folds {' '.join(_fold_arg(folds))}"
        if os.path.isdir(final):
            self._say(tag, f"predict the pool with {what}: done ({final})")
            return True
        partial = final + ".partial"
        pool = sorted(self.pool)
        mine = pool if self.num_parts is None else pool[self.part_id::self.num_parts]
        todo = self._missing(partial, mine)
        self._check_parts(k, final, partial, pool, todo)
        part = "" if self.num_parts is None else f" part {self.part_id} of {self.num_parts} ({len(mine)} cases)"
        if todo:
            log = self._log(log_name + ("" if self.num_parts is None else
                                        f"_part_{self.part_id}_of_{self.num_parts}"))
            self._say(tag, f"predict the pool{part} with {what}: {len(todo)} case(s) to go (log: {log})")
            cmd = ["nnUNetv2_predict", "-i", os.path.join(self.source_raw, "imagesUnlabeled"), "-o", partial,
                   "-d", model, "-c", self.configuration, "-f", *_fold_arg(folds), "-tr", self._trainer_of(model),
                   "-p", self.plans_identifier, "-device", self.device, "--continue_prediction"]
            cmd += ["-npp", str(self.npp)] if self.npp is not None else []
            cmd += ["-nps", str(self.nps)] if self.nps is not None else []
            if self.num_parts is not None:
                cmd += ["-num_parts", str(self.num_parts), "-part_id", str(self.part_id)]
            run_logged(cmd, log, self.env, SelfTrainError)
            left = self._missing(partial, mine)
            if left:
                raise SelfTrainError(f"nnUNetv2_predict finished but {len(left)} case(s) of the pool have no "
                                     f"prediction in {partial} (e.g. {left[:3]}); see {log}")
        else:
            self._say(tag, f"predict the pool{part} with {what}: nothing left to predict in {partial}")
        left = self._missing(partial, pool)
        if left:
            parts = sorted({pool.index(c) % self.num_parts for c in left}) if self.num_parts else []
            self._say(tag, f"{len(pool) - len(left)} of {len(pool)} pool cases predicted in {partial}; parts still "
                           f"to run: --part-id {' '.join(map(str, parts))} (of --num-parts {self.num_parts})")
            return False
        self._finalize(k, partial, final)
        return True

    def _check_parts(self, k: int, final: str, partial: str, pool, todo) -> None:
        """Once a part's job has run, the pool of `final` is predicted in parts (recorded in <final>.parts.json):
        every part's job must use the same --num-parts, and the main run, rather than predict the other jobs'
        cases a second time (or build a round dataset without them), stops and names the incomplete parts."""
        parts_file = final + PARTS_SUFFIX
        recorded = _load_json(parts_file)["num_parts"] if os.path.isfile(parts_file) else None
        if self.num_parts is not None:
            if recorded not in (None, self.num_parts):
                raise SelfTrainError(f"round {k}: the pool is predicted in {recorded} parts ({parts_file}), this "
                                     f"job has --num-parts {self.num_parts}: use --num-parts {recorded}")
            _write_json(parts_file, {"num_parts": self.num_parts})
        elif recorded is not None and todo:
            parts = sorted({pool.index(c) % recorded for c in todo})
            raise SelfTrainError(
                f"round {k}: the pool is predicted in {recorded} parts ({parts_file}) and part(s) "
                f"{', '.join(map(str, parts))} are not complete: {len(todo)} case(s) have no prediction in {partial} "
                f"({', '.join(todo[:5])}{', ...' if len(todo) > 5 else ''}). Run (or wait for) the job of each with "
                f"--num-parts {recorded} --part-id I, then this command again; to predict the rest in this run "
                f"instead, delete {parts_file}")

    def _finalize(self, k: int, partial: str, final: str) -> None:
        """Every pool case predicted: check each file reads as a label map, then rename partial -> final."""
        pool = sorted(self.pool)
        jobs = [(c, os.path.join(partial, c + self.ending), self.reader_writer, [0] + self.label_values)
                for c in pool]
        problems = [(c, p) for c, p in _map(_check_one, jobs, self.num_processes) if p]
        if problems:
            for c, _ in problems:
                os.remove(os.path.join(partial, c + self.ending))
            listed = "\n  ".join(f"{os.path.join(partial, c + self.ending)}: {p}" for c, p in problems[:10])
            raise SelfTrainError(f"{len(problems)} prediction(s) in {partial} are not valid label maps and were "
                                 f"deleted; run the command again to predict them again:\n  {listed}")
        try:
            os.replace(partial, final)
        except OSError:
            if not os.path.isdir(final):  # another part's job may have renamed it a moment ago
                raise
        if os.path.isfile(final + PARTS_SUFFIX):
            os.remove(final + PARTS_SUFFIX)
        self._say(f"round {k}", f"all {len(pool)} pool cases predicted: {final}")

    def _predict_round(self, k: int, model: str) -> bool:
        done = [self._predict(k, model, final, folds, log) for final, folds, log in self._predictions(k)]
        return all(done)
