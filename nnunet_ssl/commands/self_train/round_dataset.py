"""Step 4, build: round k's dataset D_k = Dataset<id>_<Name>ST<k> (its name recorded in state.json, found again by the
note in its dataset.json, or a new free id / --target-ids): in nnUNet_raw the labeled cases and the kept pool cases as
hard links (pseudo labels in labelsTr), in nnUNet_preprocessed the source's plans (dataset_name changed), fingerprint
and a splits_final.json that keeps every original validation fold with the pseudo-labelled cases in training only,
then nnUNetv2_preprocess; each folder written completely or not at all. `RoundDatasetStep` is a mixin of
`SelfTraining`: its methods use the settings, the state and the path helpers set up there (self.labeled, self.pool,
self.plans, self.splits, self.state, self.target_ids, self._round_name, self._save_state, ...)."""
import json
import os
import re
import shutil

from nnunet_ssl.utilities.atomic import atomic_folder, link_file, new_temp_folder, replace_folder
from nnunet_ssl.utilities.runner import run_logged

from .helpers import SelfTrainError, _dataset_ids_in_use, _fold_arg, _load_json

NOTE_KEY = "nnunet_ssl_self_training"  # dataset.json of a round dataset: where it comes from


class RoundDatasetStep:
    def _round_dataset(self, k: int) -> str:
        """The name of round k's dataset: recorded, found (a state file lost), or a new free id."""
        recorded = self.state["round_datasets"].get(str(k))
        if recorded:
            return recorded
        used = _dataset_ids_in_use(self.raw_root, self.pre_root, self.results_root)
        pattern = re.compile(rf"Dataset\d{{3}}_{re.escape(self.source[11:])}ST{k}")
        for name in sorted(n for names in used.values() for n in names if pattern.fullmatch(n)):
            note_file = os.path.join(self.raw_root, name, "dataset.json")
            if os.path.isfile(note_file):
                note = _load_json(note_file).get(NOTE_KEY, {})
                if self._ours(note, k):
                    self.state["round_datasets"][str(k)] = name
                    self._save_state()
                    return name
        if self.target_ids is not None:
            dataset_id = self.target_ids[k - 1]
        else:
            taken = set(used) | {int(n[7:10]) for n in self.state["round_datasets"].values()}
            free = [i for i in range(self.source_id + 1, 1000) if i not in taken]
            if not free:
                raise SelfTrainError(f"no free dataset id above {self.source_id} (ids are 1..999): give --target-ids")
            dataset_id = free[0]
        name = self._round_name(k, dataset_id)
        others = sorted(used.get(dataset_id, set()) - {name})
        if others:
            raise SelfTrainError(f"dataset id {dataset_id} is taken by {others[0]}")
        self.state["round_datasets"][str(k)] = name
        self._save_state()
        return name

    def _ours(self, note: dict, k: int) -> bool:
        """Whether a round dataset's note says it is round k of this self-training (the work folder compared by
        name: nnUNet_results may be mounted elsewhere on another machine)."""
        return (note.get("source_dataset") == self.source and note.get("round") == k
                and os.path.basename(str(note.get("work_folder"))) == os.path.basename(self.work))

    def _build(self, k: int, kept, model: str) -> str:
        name = self._round_dataset(k)
        tag = f"round {k}"
        raw = os.path.join(self.raw_root, name)
        if os.path.isdir(raw):
            note = _load_json(os.path.join(raw, "dataset.json")).get(NOTE_KEY, {})
            if not self._ours(note, k):
                raise SelfTrainError(f"{raw} exists but is not round {k} of this self-training ({self.work}); "
                                     f"give other --target-ids or move it away")
            self._say(tag, f"build {name}: done ({raw})")
        else:
            self._say(tag, f"build {name}: {len(self.labeled)} labeled + {len(kept)} pseudo-labelled cases")
            self._build_raw(k, raw, kept, model)
        pre = os.path.join(self.pre_root, name)
        if os.path.isdir(pre):
            self._say(tag, f"preprocess {name}: done ({pre})")
        else:
            log = self._log(f"preprocess_{name}")
            self._say(tag, f"preprocess {name} with the plans of {self.source} (log: {log})")
            self._build_preprocessed(name, pre, kept, log)
        return name

    def _build_raw(self, k: int, raw: str, kept, model: str) -> None:
        ending = self.ending
        with atomic_folder(raw) as tmp:
            for sub in ("imagesTr", "labelsTr"):
                os.makedirs(os.path.join(tmp, sub))
            for case, files in sorted(self.labeled.items()):
                for channel, image in enumerate(files["images"]):
                    link_file(image, os.path.join(tmp, "imagesTr", f"{case}_{channel:04d}{ending}"), False)
                link_file(files["label"], os.path.join(tmp, "labelsTr", case + ending), False)
            for case in kept:
                for channel, image in enumerate(self.pool[case]):
                    link_file(image, os.path.join(tmp, "imagesTr", f"{case}_{channel:04d}{ending}"), False)
                link_file(os.path.join(self._pseudo_folder(k), case + ending),
                      os.path.join(tmp, "labelsTr", case + ending), True)
            for sub in ("imagesTs", "labelsTs"):  # so the test set is predicted / evaluated under the new name
                source = os.path.join(self.source_raw, sub)
                if os.path.isdir(source):
                    os.makedirs(os.path.join(tmp, sub))
                    for f in sorted(os.listdir(source)):
                        if not f.startswith(".") and os.path.isfile(os.path.join(source, f)):
                            link_file(os.path.join(source, f), os.path.join(tmp, sub, f), False)
            dataset_json = {key: value for key, value in self.dataset_json.items() if key != "dataset"}
            dataset_json["numTraining"] = len(self.labeled) + len(kept)
            dataset_json[NOTE_KEY] = {
                "note": f"self-training round {k} of {self.source}: its labeled cases plus {len(kept)} pseudo-"
                        f"labelled cases of its imagesUnlabeled/ (labelsTr of those: predictions, not ground truth)",
                "source_dataset": self.source, "round": k,
                "pseudo_labels_by": f"{model} {self._trainer_of(model)}__{self.plans_identifier}__"
                                    f"{self.configuration} folds {' '.join(_fold_arg(self.folds))}",
                "n_labeled": len(self.labeled), "pseudo_labeled": list(kept), "filter": self.filter,
                "min_agreement": self.min_agreement, "work_folder": self.work}
            with open(os.path.join(tmp, "dataset.json"), "w") as f:
                json.dump(dataset_json, f, indent=1)

    def _source_splits(self) -> list:
        """The original split, or (no splits_final.json) the one nnunet_ssl make-splits would write, computed
        here: self-train never writes into the source."""
        if self.splits is not None:
            return self.splits
        from nnunetv2.utilities.crossval_split import generate_crossval_split

        from nnunet_ssl.data.splits import NNUNET_SPLIT_SEED
        labeled = sorted(self.labeled)
        if len(labeled) < 2:
            return [{"train": labeled, "val": []}]  # no cross-validation possible; fold 'all' only
        return generate_crossval_split(labeled, seed=NNUNET_SPLIT_SEED, n_splits=min(5, len(labeled)))

    def _build_preprocessed(self, name: str, pre: str, kept, log: str) -> None:
        """nnUNet_preprocessed/<name>: built in a hidden folder (nnUNetv2_preprocess runs with nnUNet_preprocessed
        pointing there), renamed into place when complete."""
        from nnunet_ssl.components.pseudo_labels import splits_with_pseudo_labeled
        from nnunet_ssl.data.splits import SPLITS_FILE

        root = new_temp_folder(self.pre_root, name)
        try:
            tmp = os.path.join(root, name)
            os.makedirs(tmp)
            # nnU-Net's move_plans_between_datasets, written into the temporary folder: the source's plans with
            # the new dataset_name (same images, so the same reader/writer and the same plans identifier)
            plans = json.loads(json.dumps(self.plans))
            plans["dataset_name"] = name
            with open(os.path.join(tmp, self.plans_identifier + ".json"), "w") as f:
                json.dump(plans, f, indent=4, sort_keys=False)
            shutil.copy2(self.fingerprint_file, os.path.join(tmp, "dataset_fingerprint.json"))
            shutil.copy2(os.path.join(self.raw_root, name, "dataset.json"), os.path.join(tmp, "dataset.json"))
            with open(os.path.join(tmp, SPLITS_FILE), "w") as f:
                json.dump(splits_with_pseudo_labeled(self._source_splits(), kept), f, indent=1)
            run_logged(["nnUNetv2_preprocess", "-d", name[7:10], "-plans_name", self.plans_identifier, "-c",
                        self.configuration, "-np", str(self.num_processes)], log,
                       {**self.env, "nnUNet_preprocessed": root}, SelfTrainError)
            replace_folder(tmp, pre)
        finally:
            shutil.rmtree(root, ignore_errors=True)
