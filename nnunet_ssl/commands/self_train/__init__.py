"""`nnunet_ssl self-train`: self-training at scale with stock nnU-Net commands.

Round k (k = 1..R) starts from the model trained on dataset D_{k-1} (D_0: the original dataset; with
--round0-trainer, D_0's model is that trainer's, e.g. nnUNetTrainerSGRS, whose EMA teacher then pseudo-labels the
pool; every later model is -tr's):
  1. train      the chosen folds of D_{k-1} (skipped when checkpoint_final.pth exists, continued with --c from
                checkpoint_latest.pth); `nnunet_ssl train` when a budget (--epochs/--iters) is given, else
                nnUNetv2_train;
  2. predict    the original dataset's imagesUnlabeled/ with nnUNetv2_predict (the ensemble of the folds), into
                round_<k>/pseudo_labels.partial/ with --continue_prediction; --num-parts N --part-id I predicts
                one part only (nnU-Net's -num_parts/-part_id), so parts can run as separate jobs. When every pool
                case has a readable prediction the folder is renamed to pseudo_labels/;
  3. filter     (optional) keep the pseudo-labelled cases that changed little since the previous round
                (--filter change) or on which the folds agree with their ensemble (--filter disagreement);
  4. build      D_k = Dataset<id>_<Name>ST<k> in nnUNet_raw: labeled cases + kept pool cases (hard links to the
                sources, pseudo labels in labelsTr); in nnUNet_preprocessed the original plans (dataset_name
                changed), fingerprint and a splits_final.json that keeps every original validation fold and
                puts pseudo-labelled cases in training only; then nnUNetv2_preprocess.
After the last round the same folds are trained from scratch on D_R: the final model.

Every step skips work already done and every folder is written completely or not at all, so a crashed or
split run continues where it stopped. The original raw and preprocessed datasets are only read.

Work folder: $nnUNet_results/<Dataset>/self_train_<trainer>__<plans>__<configuration>/
             (with --round0-trainer: self_train_<round-0 trainer>_then_<trainer>__<plans>__<configuration>/)
  state.json                      settings and the round datasets (a re-run with other settings is refused)
  summary.json                    per round: dataset, labeled / pseudo-labelled kept / dropped; the final model
  logs/                           one log per stock command (train_*, predict_*, preprocess_*)
  round_<k>/pseudo_labels/        the ensemble's prediction of every pool case
  round_<k>/members/fold_<f>/     each fold's own prediction (--filter disagreement)
  round_<k>/filter.json           method, min_agreement, per-case scores, kept, dropped
"""
import argparse
import os

from .filtering import FilterStep
from .helpers import SelfTrainError, _dataset_ids_in_use, _fold_arg, _load_json, _write_json
from .pool_prediction import PoolPredictionStep
from .round_dataset import RoundDatasetStep
from .training import TrainingStep

FILTERS = ("none", "change", "disagreement")


# ---------------------------------------------------------------------------------------------- the command
class SelfTraining(TrainingStep, PoolPredictionStep, FilterStep, RoundDatasetStep):
    def __init__(self, dataset, configuration: str, trainer: str = "nnUNetTrainer", plans: str = "nnUNetPlans",
                 folds=None, rounds: int = 1, target_ids=None, filter: str = "none", min_agreement: float = 0.9,
                 epochs: int = None, iterations: int = None, val_iterations: int = None, device: str = None,
                 npp: int = None, nps: int = None, num_parts: int = None, part_id: int = None,
                 num_processes: int = None, stop_before: str = None, round0_trainer: str = None):
        from nnunet_ssl.utilities.paths import ensure_ext_trainer_env

        self.configuration, self.trainer, self.plans_identifier = configuration, trainer, plans
        self.round0_trainer = round0_trainer or trainer
        self.rounds, self.filter = rounds, filter
        self.min_agreement = None if filter == "none" else float(min_agreement)
        self.epochs, self.iterations, self.val_iterations = epochs, iterations, val_iterations
        self.npp, self.nps = npp, nps
        self.num_parts, self.part_id, self.stop_before = num_parts, part_id, stop_before
        if device is None:
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        if num_processes is None:
            from nnunetv2.configuration import default_num_processes
            num_processes = default_num_processes
        self.num_processes = max(1, num_processes)

        self.raw_root, self.pre_root, self.results_root = (self._root(v) for v in
                                                           ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
        self._check_options(target_ids)
        self._load_source(dataset)
        self.folds = self._check_folds(folds)
        if filter == "disagreement" and (self.folds == ["all"] or len(self.folds) < 2):
            raise SelfTrainError(f"--filter disagreement compares the folds of an ensemble with their ensemble: it "
                                 f"needs at least 2 numbered folds (got -f {' '.join(_fold_arg(self.folds))})")
        self._check_round0_trainer()
        trainers = trainer if self.round0_trainer == trainer else f"{self.round0_trainer}_then_{trainer}"
        self.work = os.path.join(self.results_root, self.source, f"self_train_{trainers}__{plans}__{configuration}")
        self.state_file = os.path.join(self.work, "state.json")
        self.state = self._load_state()
        self.target_ids = self._check_target_ids(target_ids)
        ensure_ext_trainer_env()
        self.env = dict(os.environ)

    # ------------------------------------------------------------------------------------------ validation
    @staticmethod
    def _root(var: str) -> str:
        value = os.environ.get(var)
        if not value:
            raise SelfTrainError(f"{var} is not set: nnU-Net's folders (nnUNet_raw, nnUNet_preprocessed, "
                                 f"nnUNet_results) must be defined")
        return os.path.abspath(value)

    def _check_options(self, target_ids) -> None:
        if self.rounds < 1:
            raise SelfTrainError(f"--rounds must be at least 1, got {self.rounds}")
        if self.filter not in FILTERS:
            raise SelfTrainError(f"--filter must be one of {FILTERS}, got {self.filter!r}")
        if self.filter == "change" and self.rounds < 2:
            raise SelfTrainError("--filter change compares a round's pseudo labels with the previous round's: it "
                                 "needs --rounds 2 or more (round 1 keeps every case)")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise SelfTrainError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")
        if (self.epochs is None) != (self.iterations is None):
            raise SelfTrainError("--epochs and --iters go together (a training length is epochs x iterations); "
                                 "give both, or neither for nnU-Net's own length")
        if self.val_iterations is not None and self.epochs is None:
            raise SelfTrainError("--val-iters needs --epochs and --iters")
        for name, value in (("--epochs", self.epochs), ("--iters", self.iterations),
                            ("--val-iters", self.val_iterations)):
            if value is not None and value < 1:
                raise SelfTrainError(f"{name} must be at least 1, got {value}")
        if (self.num_parts is None) != (self.part_id is None):
            raise SelfTrainError("--num-parts and --part-id go together: --num-parts N --part-id I (I = 0..N-1) "
                                 "predicts part I of N of the pool")
        if self.num_parts is not None:
            if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
                raise SelfTrainError(f"--part-id must be in 0..{self.num_parts - 1} for --num-parts "
                                     f"{self.num_parts}, got {self.part_id}")
            if self.stop_before:
                raise SelfTrainError("--stop-before is for the main run; a run with --num-parts only predicts")
            npp = self.npp if self.npp is not None else int(os.environ.get("nnUNet_npp", 3))
            nps = self.nps if self.nps is not None else int(os.environ.get("nnUNet_nps", 3))
            if npp == 0 and nps == 0:
                raise SelfTrainError("-npp 0 -nps 0 makes nnUNetv2_predict run sequentially, and then it ignores "
                                     "-num_parts/-part_id (it would predict the whole pool): use -npp 1 -nps 1 or "
                                     "more with --num-parts")
        if target_ids is not None and len(target_ids) != self.rounds:
            raise SelfTrainError(f"--target-ids needs one dataset id per round: {self.rounds} round(s), "
                                 f"{len(target_ids)} id(s) given")

    def _load_source(self, dataset) -> None:
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        from nnunet_ssl.data.splits import SPLITS_FILE
        from nnunet_ssl.data.pool import find_unlabeled_cases

        try:
            self.source = maybe_convert_to_dataset_name(str(dataset))
        except (RuntimeError, ValueError) as e:
            raise SelfTrainError(f"dataset {dataset!r} not found (or not unique) in nnUNet_raw={self.raw_root}, "
                                 f"nnUNet_preprocessed={self.pre_root}, nnUNet_results={self.results_root}: "
                                 f"{str(e).splitlines()[0]}")
        self.source_id = int(self.source[7:10])
        self.source_raw = os.path.join(self.raw_root, self.source)
        self.source_pre = os.path.join(self.pre_root, self.source)
        dataset_json_file = os.path.join(self.source_raw, "dataset.json")
        if not os.path.isfile(dataset_json_file):
            raise SelfTrainError(f"{dataset_json_file} not found: self-training needs the raw dataset (its labeled "
                                 f"cases and its unlabeled pool imagesUnlabeled/)")
        self.dataset_json = _load_json(dataset_json_file)
        plans_file = os.path.join(self.source_pre, self.plans_identifier + ".json")
        if not os.path.isfile(plans_file):
            raise SelfTrainError(f"{plans_file} not found: plan and preprocess the dataset first:\n    "
                                 f"nnUNetv2_plan_and_preprocess -d {self.source_id} -c {self.configuration}")
        self.plans = _load_json(plans_file)
        if self.configuration not in self.plans.get("configurations", {}):
            raise SelfTrainError(f"{plans_file} has no configuration '{self.configuration}' (available: "
                                 f"{sorted(self.plans.get('configurations', {}))})")
        cm = PlansManager(self.plans).get_configuration(self.configuration)
        if cm.previous_stage_name is not None:
            raise SelfTrainError(f"'{self.configuration}' is a cascade stage (it needs the predictions of "
                                 f"'{cm.previous_stage_name}'): self-train supports single-stage configurations")
        data_folder = os.path.join(self.source_pre, cm.data_identifier)
        if not os.path.isdir(data_folder):
            raise SelfTrainError(f"{data_folder} not found: preprocess the configuration first:\n    "
                                 f"nnUNetv2_preprocess -d {self.source_id} -plans_name {self.plans_identifier} "
                                 f"-c {self.configuration}")
        self.fingerprint_file = os.path.join(self.source_pre, "dataset_fingerprint.json")
        if not os.path.isfile(self.fingerprint_file):
            raise SelfTrainError(f"{self.fingerprint_file} not found (nnUNetv2_plan_and_preprocess writes it; "
                                 f"nnU-Net's trainers copy it next to the model)")
        self.ending = self.dataset_json["file_ending"]
        self.labeled = {str(case): files for case, files in  # np.str_ keys otherwise
                        get_filenames_of_train_images_and_targets(self.source_raw, self.dataset_json).items()}
        if not self.labeled:
            raise SelfTrainError(f"{self.source_raw}: no labeled training cases (imagesTr/labelsTr)")
        self.pool = find_unlabeled_cases(self.source_raw, self.dataset_json)  # refuses ids of labeled cases
        self.splits_file = os.path.join(self.source_pre, SPLITS_FILE)
        self.splits = _load_json(self.splits_file) if os.path.isfile(self.splits_file) else None
        self.label_values = self._foreground_labels()
        self.reader_writer = self.plans["image_reader_writer"]

    def _check_round0_trainer(self) -> None:
        """With --round0-trainer: a semi-supervised one needs the source's preprocessed pool (refused now, with the
        command that makes it, rather than in the training's log), and -tr must be supervised: the round datasets
        have no unlabeled pool."""
        if self.round0_trainer == self.trainer:
            return
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunet_ssl.core.trainer import is_semi_supervised
        from nnunet_ssl.data.pool import check_pool, preprocessed_pool_folder

        if is_semi_supervised(self.trainer):
            raise SelfTrainError(f"-tr {self.trainer} is a semi-supervised trainer: the round datasets have no "
                                 f"unlabeled pool, so -tr must be a supervised one (e.g. nnUNetTrainer)")
        if is_semi_supervised(self.round0_trainer):
            cm = PlansManager(self.plans).get_configuration(self.configuration)
            check_pool(preprocessed_pool_folder(self.source_pre, cm.data_identifier), self.plans, self.configuration,
                       self.source, self.plans_identifier)

    def _foreground_labels(self) -> list:
        """Foreground label values of dataset.json (background 0 and an 'ignore' label left out; region-based
        datasets list several values per entry)."""
        values = set()
        for name, value in self.dataset_json["labels"].items():
            if name == "ignore":
                continue
            values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        values.discard(0)
        if not values:
            raise SelfTrainError(f"{os.path.join(self.source_raw, 'dataset.json')}: no foreground labels")
        return sorted(values)

    def _check_folds(self, folds) -> list:
        if not folds:
            return list(range(len(self.splits))) if self.splits else ["all"]
        if "all" in folds:
            if len(folds) > 1:
                raise SelfTrainError(f"-f {' '.join(folds)}: fold 'all' is a model of its own; give it alone")
            return ["all"]
        try:
            parsed = sorted({int(f) for f in folds})
        except ValueError:
            raise SelfTrainError(f"-f {' '.join(folds)}: folds are numbers (0, 1, ...) or 'all'")
        if self.splits is None:
            raise SelfTrainError(f"{self.splits_file} does not exist, so folds {parsed} are not defined yet. Create "
                                 f"the split first (nnunet_ssl make-splits -d {self.source_id}, or a training of "
                                 f"any fold with nnUNetv2_train), or train fold 'all' (-f all). self-train does not "
                                 f"write into the source dataset")
        bad = [f for f in parsed if not 0 <= f < len(self.splits)]
        if bad:
            raise SelfTrainError(f"{self.splits_file} has {len(self.splits)} folds (0..{len(self.splits) - 1}); "
                                 f"fold(s) {bad} do not exist")
        return parsed

    def _settings(self) -> dict:
        settings = {"dataset": self.source, "configuration": self.configuration, "trainer": self.trainer,
                    "plans": self.plans_identifier, "folds": _fold_arg(self.folds), "filter": self.filter,
                    "min_agreement": self.min_agreement, "epochs": self.epochs, "iterations": self.iterations,
                    "val_iterations": self.val_iterations}
        if self.round0_trainer != self.trainer:  # (absent otherwise: the state of a run before the option reads)
            settings["round0_trainer"] = self.round0_trainer
        return settings

    def _load_state(self) -> dict:
        settings = self._settings()
        if os.path.isfile(self.state_file):
            state = _load_json(self.state_file)
            if state.get("settings") != settings:
                old = state.get("settings", {})
                changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
                raise SelfTrainError(
                    f"{self.state_file}: this self-training was started with other settings (before, now): "
                    f"{changed}. Run it with its own settings, or delete {self.work} (and its round datasets "
                    f"{sorted(state.get('round_datasets', {}).values())}) to start over")
            return state
        return {"settings": settings, "round_datasets": {}}

    def _save_state(self) -> None:
        _write_json(self.state_file, self.state)

    def _check_target_ids(self, target_ids):
        if target_ids is None:
            return None
        if len(set(target_ids)) != len(target_ids) or self.source_id in target_ids:
            raise SelfTrainError(f"--target-ids {target_ids}: the ids must differ from each other and from the "
                                 f"source dataset's ({self.source_id})")
        used = _dataset_ids_in_use(self.raw_root, self.pre_root, self.results_root)
        for k, dataset_id in enumerate(target_ids, start=1):
            if not 1 <= dataset_id <= 999:
                raise SelfTrainError(f"--target-ids: {dataset_id} is not a dataset id (1..999)")
            recorded = self.state["round_datasets"].get(str(k))
            if recorded is not None and int(recorded[7:10]) != dataset_id:
                raise SelfTrainError(f"{self.state_file}: round {k}'s dataset is already {recorded}, not id "
                                     f"{dataset_id} (--target-ids)")
            foreign = sorted(used.get(dataset_id, set()) - {self._round_name(k, dataset_id)})
            if foreign:
                raise SelfTrainError(f"--target-ids: dataset id {dataset_id} is taken by {foreign[0]}")
        return list(target_ids)

    # ------------------------------------------------------------------------------------------ names, paths
    def _round_name(self, k: int, dataset_id: int) -> str:
        return f"Dataset{dataset_id:03d}_{self.source[11:]}ST{k}"

    def _round_folder(self, k: int) -> str:
        return os.path.join(self.work, f"round_{k}")

    def _pseudo_folder(self, k: int) -> str:
        return os.path.join(self._round_folder(k), "pseudo_labels")

    def _member_folder(self, k: int, fold) -> str:
        return os.path.join(self._round_folder(k), "members", f"fold_{fold}")

    def _log(self, name: str) -> str:
        return os.path.join(self.work, "logs", name + ".log")

    def _trainer_of(self, dataset_name: str) -> str:
        """The trainer of the model on `dataset_name`: --round0-trainer on the source, -tr on every round's."""
        return self.round0_trainer if dataset_name == self.source else self.trainer

    def _model_folder(self, dataset_name: str, fold=None) -> str:
        folder = os.path.join(self.results_root, dataset_name,
                              f"{self._trainer_of(dataset_name)}__{self.plans_identifier}__{self.configuration}")
        return folder if fold is None else os.path.join(folder, f"fold_{fold}")

    @staticmethod
    def _say(tag: str, message: str) -> None:
        print(f"[{tag}] {message}", flush=True)

    # ------------------------------------------------------------------------------------------ the run
    def _summary(self, final_model: str = None) -> dict:
        rounds = []
        model = self.source
        for k in range(1, self.rounds + 1):
            name = self.state["round_datasets"].get(str(k))
            filter_file = os.path.join(self._round_folder(k), "filter.json")
            entry = {"round": k, "pseudo_labels_by": model, "pseudo_labels_trainer": self._trainer_of(model),
                     "dataset": name, "n_labeled": len(self.labeled), "n_pool": len(self.pool)}
            if os.path.isfile(filter_file):
                result = _load_json(filter_file)
                entry.update(filter=result["method"], min_agreement=result["min_agreement"],
                             n_pseudo_kept=result["n_kept"], n_pseudo_dropped=result["n_dropped"])
            rounds.append(entry)
            model = name
        summary = {"source": self.source, "configuration": self.configuration, "trainer": self.trainer,
                   "round0_trainer": self.round0_trainer, "plans": self.plans_identifier,
                   "folds": _fold_arg(self.folds), "rounds": rounds}
        if final_model:
            summary["final_model"] = {"dataset": final_model, "trainer": self.trainer, "plans": self.plans_identifier,
                                      "configuration": self.configuration, "folds": _fold_arg(self.folds),
                                      "folder": self._model_folder(final_model),
                                      "predict": self._predict_command(final_model)}
        return summary

    def _write_summary(self, final_model: str = None) -> dict:
        summary = self._summary(final_model)
        _write_json(os.path.join(self.work, "summary.json"), summary)
        return summary

    def _predict_command(self, model: str) -> str:
        return (f"nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {model[7:10]} -c {self.configuration} "
                f"-tr {self.trainer} -p {self.plans_identifier} -f {' '.join(_fold_arg(self.folds))}")

    def run(self) -> str:
        """Run (or continue) the self-training; returns the final model's dataset name, None if it stopped
        before the end (a part, or --stop-before)."""
        budget = (f"{self.epochs} epochs x {self.iterations} iterations" if self.epochs is not None
                  else "nnU-Net's training length")
        print(f"self-training {self.source} ({len(self.labeled)} labeled, {len(self.pool)} unlabeled), "
              f"{self.configuration}, "
              + (f"{self.trainer}" if self.round0_trainer == self.trainer else
                 f"round 0 {self.round0_trainer}, then {self.trainer}")
              + f", folds {' '.join(_fold_arg(self.folds))}, {self.rounds} "
              f"round(s), filter {self.filter}"
              + (f" (min agreement {self.min_agreement})" if self.min_agreement is not None else "")
              + f", {budget}\nwork folder: {self.work}", flush=True)
        if self.num_parts is not None:
            self._run_part()
            return None
        self._save_state()
        model = self.source
        for k in range(1, self.rounds + 1):
            tag = f"round {k}"
            if not self._predicted(k):
                if not self._train(model, tag):
                    self._write_summary()
                    return None
                if self.stop_before == "predict":
                    self._say(tag, f"stopping before predicting the pool with {model} (--stop-before predict); "
                                   f"run the parts now (--num-parts N --part-id I), then this command again")
                    self._write_summary()
                    return None
                if not self._predict_round(k, model):
                    raise SelfTrainError(f"round {k}: the pool is not completely predicted")
            else:
                for final, _, _ in self._predictions(k):
                    self._say(tag, f"predict the pool: done ({final})")
            kept, _ = self._filter(k)
            model = self._build(k, kept, model)
        if not self._train(model, "final"):
            self._write_summary()
            return None
        summary = self._write_summary(model)
        print(f"final model: {model}, {self.trainer}__{self.plans_identifier}__{self.configuration}, folds "
              f"{' '.join(_fold_arg(self.folds))} ({self._model_folder(model)})\n"
              f"predict with:\n    {summary['final_model']['predict']}\n"
              f"summary: {os.path.join(self.work, 'summary.json')}", flush=True)
        return model

    def _run_part(self) -> None:
        """A part's job: predict its part of the first round whose pool is not completely predicted."""
        model = self.source
        for k in range(1, self.rounds + 1):
            if self._predicted(k):
                model = self.state["round_datasets"].get(str(k))
                continue
            missing = self._untrained(model) if model else self.folds
            if model is None or missing or not os.path.isdir(os.path.join(self.pre_root, model)):
                what = model or f"round {k - 1}'s dataset"
                raise SelfTrainError(
                    f"round {k}: the model that predicts the pool ({what}, folds {' '.join(_fold_arg(missing))}) is "
                    f"not trained yet. Parts only predict: run the command without --num-parts/--part-id first "
                    f"(add --stop-before predict to stop after the training)")
            self._save_state()
            if self._predict_round(k, model):
                self._say(f"round {k}", "the pool is completely predicted: run the command without --num-parts/"
                                        "--part-id to continue")
            return
        print("every round's pool is predicted already: nothing for a part to do; run the command without "
              "--num-parts/--part-id to continue", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="nnunet_ssl self-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", required=True, help="dataset name or id (raw dataset with imagesUnlabeled/, planned and "
                                             "preprocessed)")
    p.add_argument("-c", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", default="nnUNetTrainer", help="supervised trainer of every round's model and the final "
                                                         "one (default: nnUNetTrainer)")
    p.add_argument("--round0-trainer", default=None,
                   help="trainer of the first model, on the original dataset, whose predictions are round 1's "
                        "pseudo labels: e.g. nnUNetTrainerSGRS (its EMA teacher predicts; the pool must be "
                        "preprocessed, nnunet_ssl preprocess-unlabeled). Default: -tr")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", nargs="+", default=None, help="folds of every model, or 'all' (default: the folds of "
                                                       "splits_final.json, 'all' without one)")
    p.add_argument("--rounds", type=int, default=1, help="self-training rounds (default: 1)")
    p.add_argument("--target-ids", type=int, nargs="+", default=None,
                   help="dataset id of each round's dataset (default: the smallest free ids above the source's)")
    p.add_argument("--filter", choices=FILTERS, default="none",
                   help="drop unstable pseudo-labelled cases: 'change' between rounds (from round 2) or "
                        "'disagreement' of the folds with their ensemble (default: none)")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="keep a case when its agreement (mean foreground Dice) is at least this (default: 0.9)")
    p.add_argument("--epochs", type=int, default=None, help="training length (with --iters; default: nnU-Net's)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per epoch")
    p.add_argument("--val-iters", type=int, default=None, help="validation iterations per epoch")
    p.add_argument("-device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("-npp", type=int, default=None, help="nnUNetv2_predict -npp")
    p.add_argument("-nps", type=int, default=None, help="nnUNetv2_predict -nps")
    p.add_argument("--num-parts", type=int, default=None, help="predict only part --part-id of this many parts "
                                                               "of the pool (nnUNetv2_predict -num_parts)")
    p.add_argument("--part-id", type=int, default=None, help="0 .. --num-parts - 1")
    p.add_argument("--stop-before", choices=("train", "predict"), default=None,
                   help="stop before the next training (to train folds as separate jobs) or the next prediction of "
                        "the pool (to predict it in parts)")
    p.add_argument("-np", type=int, default=None, help="processes for nnUNetv2_preprocess and for reading pseudo "
                                                       "labels (default: nnU-Net's, nnUNet_def_n_proc)")
    a = p.parse_args(argv)
    SelfTraining(a.d, a.c, a.tr, a.p, a.f, a.rounds, a.target_ids, a.filter, a.min_agreement, a.epochs, a.iters,
                 a.val_iters, a.device, a.npp, a.nps, a.num_parts, a.part_id, a.np, a.stop_before,
                 a.round0_trainer).run()


if __name__ == "__main__":
    main()
