"""`nnunet_ssl benchmark`: several trainers, one explicit budget, the test set, one table.

For a raw dataset with imagesUnlabeled/ and a test set (imagesTs + labelsTs), in its own output folder:
1. plan and preprocess with stock nnU-Net if not done, preprocess the unlabeled pool (skipped when up to date);
2. per trainer: `nnunet_ssl train` (nnUNetv2_train's code with the budget: epochs x iterations, fold `all` or a
   given fold) into the benchmark's own nnUNet_results, stock `nnUNetv2_predict` on imagesTs, evaluation with
   nnunet_ssl.evaluation.metrics, and a record (records/<trainer>.json) with the metrics, training seconds per
   iteration, wall time and peak memory (RAM: the training process's peak RSS; GPU: torch's peak allocation).
   Fold `all` skips nnU-Net's final validation (its validation cases were trained on);
3. the leaderboard of all records: leaderboard.md, leaderboard.csv, dice_per_case.png, the paired per-case
   differences to the reference trainer (--reference; paired_statistics.csv/.json, also in leaderboard.md),
   overlays.png (image, ground truth and each trainer's prediction of the test cases, the reference's worst
   first) and report.html, one self-contained page of all of it with the training curves, commands and versions.

Resumable: a trainer with a record is not re-run; a trainer whose training finished is not re-trained; an
interrupted training continues from its latest checkpoint (--c). The budget is fixed per output folder.
Killed at any point, it leaves nothing half-written: JSON files are written to `<file>.tmp` and renamed;
predictions go to a hidden `.test_predictions_fold_<f>.partial` folder (removed by the next run, never read by
the leaderboard), are renamed into place, and count as done only once their summary_ssl.json is written.

Output folder layout (stable; the project's issues report numbers from it):
  benchmark.json                 dataset, configuration, plans, fold, budget, device
  records/<trainer>.json         one finished trainer (schema: RECORD_KEYS)
  logs/<trainer>.{train,predict}.log
  nnUNet_results/...             the trained models (nnU-Net's layout)
  nnUNet_results/<Dataset>/<trainer>__<plans>__<conf>/test_predictions_fold_<f>/  predictions + summary_ssl.json
  leaderboard.md, leaderboard.csv, paired_statistics.{csv,json}, dice_per_case.png, overlays.png, report.html
"""
import json
import os
import shutil
import sys

from nnunet_ssl.utilities.atomic import write_json
from nnunet_ssl.utilities.inputs import UserError
from nnunet_ssl.utilities.runner import run_logged

RECORD_KEYS = ("trainer", "dataset", "configuration", "fold", "epochs", "iterations_per_epoch", "device",
               "n_labeled", "n_unlabeled", "n_test", "train_seconds", "s_per_iter", "peak_rss_gb", "peak_gpu_gb",
               "summary_file", "Dice_mean", "Dice_median", "failed_cases")


class BenchmarkError(UserError):
    pass


def _run(cmd, log, env):
    """Run a command, its output to `log`; returns (peak RSS of the process tree's largest process in GB, s)."""
    return run_logged(cmd, log, env, BenchmarkError)


def _read_json(path: str) -> dict:
    """{} for a file that does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def child_env(out: str) -> dict:
    """The environment of the commands the benchmark runs: models go to the benchmark's own nnUNet_results;
    nnU-Net finds the user's trainer folders (nnUNet_extTrainer) and the plugin's."""
    from nnunet_ssl.utilities.paths import with_plugin_trainers
    return {**os.environ, "nnUNet_results": os.path.join(out, "nnUNet_results"),
            "nnUNet_extTrainer": with_plugin_trainers(os.environ.get("nnUNet_extTrainer"))}


def prepare_dataset(name: str, configuration: str, plans: str, log: str, env: dict, num_processes: int) -> None:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    from nnunet_ssl.data.pool import preprocess_unlabeled

    if not os.path.isfile(os.path.join(nnUNet_preprocessed, name, plans + ".json")):
        if plans != "nnUNetPlans":
            raise BenchmarkError(f"{name} has no plans {plans}: plan it first (stock planning makes nnUNetPlans)")
        # nnUNetv2_plan_and_preprocess -d takes integer ids; nnU-Net 2.8's planner calls
        # torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0
        _run(["nnUNetv2_plan_and_preprocess", "-d", str(convert_dataset_name_to_id(name)), "-c", configuration,
              "-np", str(num_processes), "-npfp", str(num_processes), "--verify_dataset_integrity"], log,
             {**env, "nnUNet_n_proc_DA": str(max(1, int(env.get("nnUNet_n_proc_DA") or 1)))})
    preprocess_unlabeled(name, [configuration], plans, num_processes)


def run_benchmark(dataset: str, configuration: str, trainers, epochs: int, iterations: int, fold: str = "all",
                  out: str = None, val_iterations: int = None, device: str = "cpu", plans: str = "nnUNetPlans",
                  nsd_tolerance: float = 1.0, num_processes: int = 2, reference: str = None) -> str:
    """Run (or resume) the benchmark; returns the leaderboard Markdown. `reference`: the trainer the others are
    compared with case by case (default: nnUNetTrainer if listed, else the first)."""
    from nnunet_ssl.evaluation.leaderboard import (TEST_PREFIX, dataset_counts, make_row, markdown_table,
                                                   statistics_markdown, write_leaderboard)
    from nnunet_ssl.evaluation.metrics import evaluate_folder
    from nnunet_ssl.evaluation.overlay import write_contact_sheet
    from nnunet_ssl.evaluation.statistics import default_reference, paired_statistics
    from nnunet_ssl.utilities.inputs import dataset_name, nnunet_folder, trainer_class

    name = dataset_name(dataset, needs=("nnUNet_raw",))
    raw = os.path.join(nnunet_folder("nnUNet_raw"), name)
    for trainer in trainers:  # a misspelled name fails now, not after the trainers before it have trained
        trainer_class(trainer)
    if reference is not None and reference not in trainers:
        raise BenchmarkError(f"--reference {reference} is not one of the trainers (-tr {' '.join(trainers)})")
    for sub in ("imagesTs", "labelsTs", "imagesUnlabeled"):
        if not os.path.isdir(os.path.join(raw, sub)):
            raise BenchmarkError(f"{os.path.join(raw, sub)} does not exist: the benchmark needs a test set "
                                 f"(imagesTs + labelsTs) and an unlabeled pool (imagesUnlabeled)")
    out = os.path.abspath(out or f"nnunet_ssl_benchmark/{name}__{configuration}__{epochs}x{iterations}__fold_{fold}")
    setup = {"dataset": name, "configuration": configuration, "plans": plans, "fold": str(fold), "epochs": epochs,
             "iterations_per_epoch": iterations, "val_iterations": val_iterations, "device": device,
             "nsd_tolerance_mm": nsd_tolerance}
    setup_file = os.path.join(out, "benchmark.json")
    if os.path.isfile(setup_file):
        with open(setup_file) as f:
            previous = json.load(f)
        if previous != setup:
            changed = {k: (previous.get(k), v) for k, v in setup.items() if previous.get(k) != v}
            raise BenchmarkError(f"{setup_file}: this folder holds a benchmark with other settings {changed}; "
                                 f"use another output folder (-o) for another budget")
    for sub in ("records", "logs", "nnUNet_results"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    write_json(setup_file, setup)

    env = child_env(out)
    prepare_dataset(name, configuration, plans, os.path.join(out, "logs", "preprocess.log"), env, num_processes)
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    counts = dataset_counts(name)

    for trainer in trainers:
        record_file = os.path.join(out, "records", f"{trainer}.json")
        if os.path.isfile(record_file):
            print(f"{trainer}: done (record {record_file}); delete the record to run it again")
            continue
        model = os.path.join(out, "nnUNet_results", name, f"{trainer}__{plans}__{configuration}")
        fold_folder = os.path.join(model, f"fold_{fold}")
        predictions = os.path.join(model, TEST_PREFIX + str(fold))
        stats_file = os.path.join(out, "logs", f"{trainer}.stats.json")
        log = os.path.join(out, "logs", f"{trainer}.train.log")
        stats = _read_json(stats_file)
        if not (os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth")) and "peak_rss_gb" in stats):
            print(f"{trainer}: training {epochs} epochs x {iterations} iterations (log: {log})", flush=True)
            cmd = [sys.executable, "-m", "nnunet_ssl", "train", name, configuration, str(fold), "-tr", trainer,
                   "-p", plans, "--epochs", str(epochs), "--iters", str(iterations), "-device", device,
                   "--stats-json", stats_file]
            if val_iterations:
                cmd += ["--val-iters", str(val_iterations)]
            if str(fold) == "all":  # its validation cases were trained on: nnU-Net's final validation tells nothing
                cmd.append("--no-val")
            if os.path.isfile(os.path.join(fold_folder, "checkpoint_latest.pth")):
                cmd.append("--c")
            elif os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth")):
                cmd.append("--overwrite")  # this benchmark's own model, killed before its timing was written
            peak_rss_gb, _ = _run(cmd, log, env)
            stats = {**_read_json(stats_file), "peak_rss_gb": peak_rss_gb}
            write_json(stats_file, stats)
            shutil.rmtree(predictions, ignore_errors=True)  # of an older model

        if not os.path.isfile(os.path.join(predictions, "summary_ssl.json")):
            print(f"{trainer}: predicting {os.path.join(raw, 'imagesTs')}", flush=True)
            # hidden, and not named test_predictions_fold_*: the leaderboard never reads it
            partial = os.path.join(model, "." + TEST_PREFIX + str(fold) + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            workers = ["-npp", "0", "-nps", "0"] if device == "cpu" else []
            _run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", partial, "-d", name, "-c",
                  configuration, "-f", str(fold), "-tr", trainer, "-p", plans, "-device", device,
                  "--disable_progress_bar"] + workers, os.path.join(out, "logs", f"{trainer}.predict.log"), env)
            shutil.rmtree(predictions, ignore_errors=True)
            os.replace(partial, predictions)
            # evaluated in place (the summary names these files); without its summary the folder is predicted
            # again by the next run
            evaluate_folder(os.path.join(raw, "labelsTs"), predictions, dataset_json,
                            os.path.join(predictions, "summary_ssl.json"), nsd_tolerance, num_processes)
        with open(os.path.join(predictions, "summary_ssl.json")) as f:
            summary = json.load(f)
        record = {"trainer": trainer, "dataset": name, "configuration": configuration, "fold": str(fold),
                  "epochs": epochs, "iterations_per_epoch": iterations, "device": device, **counts,
                  "n_test": summary["n_cases"], "train_seconds": stats["train_seconds"],
                  "s_per_iter": stats["s_per_iter"], "peak_rss_gb": stats["peak_rss_gb"],
                  "peak_gpu_gb": stats["peak_gpu_gb"], "summary_file": os.path.join(predictions, "summary_ssl.json"),
                  "Dice_mean": summary["foreground"]["Dice"]["mean"],
                  "Dice_median": summary["foreground"]["Dice"]["median"], "failed_cases": summary["failed_cases"]}
        write_json(record_file, record)
        print(f"{trainer}: mean Dice {record['Dice_mean']:.4f}, median {record['Dice_median']:.4f}, "
              f"{record['failed_cases']} failed, {record['s_per_iter']:.3f} s/iter", flush=True)

    rows = []
    for trainer in trainers:
        with open(os.path.join(out, "records", f"{trainer}.json")) as f:
            record = json.load(f)
        with open(record["summary_file"]) as f:
            summary = json.load(f)
        rows.append(make_row(summary, **{k: record[k] for k in RECORD_KEYS if k not in
                                         ("summary_file", "Dice_mean", "Dice_median", "failed_cases")},
                             evaluation=f"test (fold {fold})", folds=str(fold), folds_missing="",
                             s_per_epoch=None, model_folder=os.path.join(out, "nnUNet_results", name,
                                                                         f"{trainer}__{plans}__{configuration}")))
    reference = reference or default_reference(list(trainers))
    statistics = paired_statistics(rows, reference)
    overlays = os.path.join(out, "overlays.png")  # worst cases of the reference trainer first
    shown = [reference] + [t for t in trainers if t != reference]
    write_contact_sheet(os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs"),
                        [os.path.join(out, "nnUNet_results", name, f"{t}__{plans}__{configuration}",
                                      TEST_PREFIX + str(fold)) for t in shown], shown, dataset_json, overlays)
    budget = f"{epochs} epochs x {iterations} iterations, fold {fold}, {device}"
    command = benchmark_command(name, configuration, trainers, epochs, iterations, fold, out, val_iterations,
                                device, plans, nsd_tolerance, num_processes, reference)
    files = write_leaderboard(rows, out, f"Benchmark: {name} {configuration}, {budget}", statistics,
                              {f"Overlays: test cases, worst of {reference} first": overlays},
                              commands=[command, f"# which ran, with nnUNet_results={env['nnUNet_results']} and "
                                                 f"nnUNet_extTrainer={env['nnUNet_extTrainer']}:"]
                              + logged_commands(out, trainers))
    files["overlays"] = overlays
    table = markdown_table(rows)
    print(f"\n{table}" + (f"\n\n{statistics_markdown(statistics)}" if statistics else ""))
    print("\n" + "\n".join(f"{k}: {v}" for k, v in files.items()))
    return table


def benchmark_command(dataset, configuration, trainers, epochs, iterations, fold, out, val_iterations, device,
                      plans, nsd_tolerance, num_processes, reference) -> list:
    """The `nnunet_ssl benchmark` command line that runs (or resumes) exactly this benchmark."""
    cmd = ["nnunet_ssl", "benchmark", "-d", dataset, "-c", configuration, "-tr", *trainers, "--epochs", epochs,
           "--iters", iterations] + (["--val-iters", val_iterations] if val_iterations else []) + \
        ["-f", fold, "-p", plans, "-o", out, "-device", device, "--nsd-tolerance", nsd_tolerance,
         "-np", num_processes, "--reference", reference]
    return [str(c) for c in cmd]


def logged_commands(out: str, trainers) -> list:
    """The commands the benchmark ran, as its logs record them (`$ ...` lines: preprocessing, then each trainer's
    training and prediction, resumed runs included)."""
    commands = []
    for log in ["preprocess.log"] + [f"{t}.{step}.log" for t in trainers for step in ("train", "predict")]:
        path = os.path.join(out, "logs", log)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                commands += [line[2:].rstrip("\n") for line in f if line.startswith("$ ")]
    return commands


def parser():
    import argparse
    p = argparse.ArgumentParser(prog="nnunet_ssl benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", required=True, help="dataset name or id (raw dataset with imagesUnlabeled, imagesTs, labelsTs)")
    p.add_argument("-c", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", nargs="+", required=True, help="trainers, e.g. nnUNetTrainer nnUNetTrainerMeanTeacher")
    p.add_argument("--epochs", type=int, required=True, help="training epochs of every trainer")
    p.add_argument("--iters", type=int, required=True, help="training iterations per epoch")
    p.add_argument("--val-iters", type=int, default=None, help="validation iterations per epoch "
                                                               "(default: iters // 5)")
    p.add_argument("-f", default="all", help="fold (default: all)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans; planned "
                                                     "automatically only for nnUNetPlans)")
    p.add_argument("-o", default=None, help="output folder (default: nnunet_ssl_benchmark/<dataset>__<conf>__"
                                            "<epochs>x<iters>__fold_<f>)")
    p.add_argument("-device", default="cpu", help="cuda, cpu or mps (default: cpu)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm")
    p.add_argument("-np", type=int, default=2, help="processes for preprocessing and evaluation")
    p.add_argument("--reference", default=None, help="trainer the others are compared with, case by case, and "
                                                     "whose worst cases the overlays show first (default: "
                                                     "nnUNetTrainer if listed, else the first)")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    run_benchmark(a.d, a.c, a.tr, a.epochs, a.iters, a.f, a.o, a.val_iters, a.device, a.p, a.nsd_tolerance, a.np,
                  a.reference)
