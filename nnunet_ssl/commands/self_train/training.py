"""Step 1, train: every chosen fold of a model on a dataset, with `nnunet_ssl train` when a budget (--epochs/--iters)
is given, else nnUNetv2_train; a fold with checkpoint_final.pth is skipped (only its validation run if missing),
one with checkpoint_latest.pth continued with --c, and --stop-before train prints the commands of the folds left.
`TrainingStep` is a mixin of `SelfTraining`: its methods use the settings and the path helpers set up there
(self.folds, self.trainer, self.epochs, self._model_folder, self._log, ...)."""
import os
import sys

from nnunet_ssl.utilities.runner import run_logged

from .helpers import SelfTrainError


class TrainingStep:
    def _untrained(self, dataset_name: str) -> list:
        """Folds of the model that still lack checkpoint_final.pth."""
        return [f for f in self.folds if not os.path.isfile(
            os.path.join(self._model_folder(dataset_name, f), "checkpoint_final.pth"))]

    def _train_command(self, dataset_name: str, fold, continue_training: bool) -> list:
        if self.epochs is not None:
            cmd = [sys.executable, "-m", "nnunet_ssl", "train", dataset_name, self.configuration, str(fold),
                   "-tr", self._trainer_of(dataset_name), "-p", self.plans_identifier, "--epochs", str(self.epochs),
                   "--iters", str(self.iterations), "-device", self.device]
            if self.val_iterations is not None:
                cmd += ["--val-iters", str(self.val_iterations)]
        else:
            cmd = ["nnUNetv2_train", dataset_name, self.configuration, str(fold), "-tr", self._trainer_of(dataset_name),
                   "-p", self.plans_identifier, "-device", self.device]
        return cmd + (["--c"] if continue_training else [])

    def _train(self, dataset_name: str, tag: str) -> bool:
        """Train every fold of the model on `dataset_name`; False when stopped by --stop-before train."""
        missing = self._untrained(dataset_name)
        if missing and self.stop_before == "train":
            commands = "\n    ".join(" ".join(self._train_command(dataset_name, f, False)) for f in missing)
            self._say(tag, f"stopping before training {dataset_name} (--stop-before train). The folds left, one job "
                           f"each if you like (a running or finished fold is picked up by the next run):\n    "
                           f"{commands}")
            return False
        for fold in self.folds:
            folder = self._model_folder(dataset_name, fold)
            log = self._log(f"train_{dataset_name}_fold_{fold}")
            if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
                if os.path.isfile(os.path.join(folder, "validation", "summary.json")):
                    self._say(tag, f"train {dataset_name} fold {fold}: done ({folder})")
                    continue
                self._say(tag, f"train {dataset_name} fold {fold}: trained, validation missing: validating (log: "
                               f"{log})")
                run_logged(["nnUNetv2_train", dataset_name, self.configuration, str(fold), "-tr",
                            self._trainer_of(dataset_name), "-p", self.plans_identifier, "-device", self.device,
                            "--val"], log, self.env, SelfTrainError)
                continue
            resume = os.path.isfile(os.path.join(folder, "checkpoint_latest.pth"))
            what = "continuing from checkpoint_latest.pth (--c)" if resume else "training"
            budget = (f"{self.epochs} epochs x {self.iterations} iterations" if self.epochs is not None
                      else "nnU-Net's own length")
            self._say(tag, f"train {dataset_name} fold {fold}: {what}, {budget} (log: {log})")
            run_logged(self._train_command(dataset_name, fold, resume), log, self.env, SelfTrainError,
                       epochs=self.epochs, progress=f"{tag} train {dataset_name} fold {fold}")
            if not os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
                raise SelfTrainError(f"training of {dataset_name} fold {fold} ended without "
                                     f"{os.path.join(folder, 'checkpoint_final.pth')}; see {log}")
        return True
