"""Step 3, filter: score every pseudo-labelled pool case by its agreement (mean foreground Dice) with the previous
round's pseudo label (--filter change, from round 2) or of each fold's prediction with the ensemble's (--filter
disagreement), keep the cases at or above --min-agreement, and write round_<k>/filter.json (without a filter every case
is kept). `FilterStep` is a mixin of `SelfTraining`: its methods use the settings and the path helpers set up there
(self.filter, self.min_agreement, self.pool, self._pseudo_folder, self._member_folder, ...). `_score_one` is the
worker that scores one case."""
import os

from .helpers import _load_json, _map, _read_seg, _write_json


def _score_one(job):
    """Worker: (case, agreement score) between a pseudo label and its reference(s)."""
    from nnunet_ssl.components.pseudo_labels import agreement, ensemble_agreement
    case, path, references, reader_writer, labels, method = job
    seg = _read_seg(path, reader_writer)
    others = [_read_seg(r, reader_writer) for r in references]
    if method == "change":
        return case, agreement(seg, others[0], labels)
    return case, ensemble_agreement(seg, others, labels)


class FilterStep:
    def _filter(self, k: int):
        tag = f"round {k}"
        path = os.path.join(self._round_folder(k), "filter.json")
        pool = sorted(self.pool)
        if os.path.isfile(path):
            result = _load_json(path)
            self._say(tag, f"filter: done, kept {len(result['kept'])} of {len(pool)} pseudo-labelled cases ({path})")
            return result["kept"], result["dropped"]
        scores = {}
        if self.filter == "change" and k >= 2:
            previous = self._pseudo_folder(k - 1)
            jobs = [(c, os.path.join(self._pseudo_folder(k), c + self.ending),
                     [os.path.join(previous, c + self.ending)], self.reader_writer, self.label_values, "change")
                    for c in pool]
            what = f"agreement with round {k - 1}'s pseudo labels"
        elif self.filter == "disagreement":
            jobs = [(c, os.path.join(self._pseudo_folder(k), c + self.ending),
                     [os.path.join(self._member_folder(k, f), c + self.ending) for f in self.folds],
                     self.reader_writer, self.label_values, "disagreement") for c in pool]
            what = "agreement of each fold's prediction with the ensemble's"
        else:
            jobs = []
            what = "no filter" if self.filter == "none" else "round 1 has no previous round: every case kept"
        if jobs:
            self._say(tag, f"filter: scoring {len(jobs)} pseudo-labelled cases ({what})")
            scores = dict(_map(_score_one, jobs, self.num_processes))
        from nnunet_ssl.components.pseudo_labels import keep_stable
        kept, dropped = keep_stable(scores, self.min_agreement) if scores else (pool, [])
        result = {"method": self.filter, "min_agreement": self.min_agreement, "scored_by": what,
                  "n_pool": len(pool), "n_kept": len(kept), "n_dropped": len(dropped),
                  "scores": {c: scores[c] for c in sorted(scores)}, "kept": kept, "dropped": dropped}
        _write_json(path, result)
        self._say(tag, f"filter: kept {len(kept)} of {len(pool)} pseudo-labelled cases"
                       + (f" (min agreement {self.min_agreement})" if scores else f" ({what})") + f": {path}")
        return kept, dropped
