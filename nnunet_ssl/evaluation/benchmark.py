"""`nnunet_ssl benchmark`: several trainers, one explicit budget, the test set, one table; repeated over
independent runs (--runs) and labeled draws (--draws).

For a raw dataset with imagesUnlabeled/ and a test set (imagesTs + labelsTs), in its own output folder:
1. plan and preprocess with stock nnU-Net if not done, preprocess the unlabeled pool (skipped when up to date);
   draws 2..D (--draws): the same number of labeled cases drawn with another seed from the training cases
   (imagesTr + imagesUnlabeled; the others become unlabeled, their labels unused), the same test set: a dataset
   `<name>_draw<k>` linked from the source's raw files (never modified) with labels of newly labeled cases from
   --draw-labels, in the benchmark's own draw_<k>/nnUNet_raw, preprocessed with the source's plans into
   draw_<k>/nnUNet_preprocessed (nnunet_ssl.data.splits.build_draw). Draw 1 is the dataset as given;
   --upper-bound: the same with every training case labeled (`<name>_all_labeled` in draw_all/, no pool), on which
   the reference trainer (a supervised one) trains in every run: the fully supervised row of the table, paired
   with the reference of each draw (how much of the gap to full labels a trainer closes);
2. per run (--runs), draw and trainer: `nnunet_ssl train` (nnUNetv2_train's code with the budget: epochs x
   iterations, fold `all` or a given fold) into that run's own nnUNet_results, stock `nnUNetv2_predict` on
   imagesTs, evaluation with nnunet_ssl.evaluation.metrics, and a record (records/<trainer>.json) with the
   metrics, the draw's labeled cases, training seconds per iteration, wall time and peak memory (RAM: the training
   process's peak RSS; GPU: torch's peak allocation). Fold `all` skips nnU-Net's final validation (its validation
   cases were trained on). Every draw's run 1 comes before any run 2;
3. the leaderboard of each draw and run in its folder, and of all of them at the top: first a summary (per
   trainer its results and, against the reference, the pooled paired difference, better / worse pairs, failed
   cases per draw: statistics.summary_cells), then the table over runs and draws (per trainer: mean, std and
   range of mean Dice, median Dice and failed cases), every result, the paired
   per-case differences to the reference trainer (--reference) in each draw and run and pooled over all of them
   (paired_statistics.csv/.json), overlays.png (image, ground truth and each trainer's prediction of the test
   cases, the reference's worst first), paired_overlays_<trainer>.png (the cases where the trainer loses most
   against the reference, then those it gains most on, with Dice and predicted / true size) and report.html, one
   self-contained page of all of it with the training curves, commands and versions;
4. --postprocess KIND: every record's test predictions once more after one of nnU-Net's postprocessings
   (POSTPROCESSING), the same for every trainer, fixed beforehand, and the tables of all draws and runs of those in
   postprocessed_<KIND>/ (the predictions and the other tables stay as they are).

Resumable: a trainer with a record is not re-run; a trainer whose training finished is not re-trained; an
interrupted training continues from its latest checkpoint (--c; written after every epoch). The budget is fixed
per output folder; runs and draws can be added later (a larger --runs or --draws with the same folder trains only
what is new). --report-only prepares, trains and predicts nothing: the tables of the records the folder has
for the trainers, draws and runs asked for, the missing ones named (a long benchmark read while it runs, or a
matrix that is still partial). Killed at any point, it leaves nothing half-written: JSON files are written to `<file>.tmp` and
renamed; a draw's raw dataset is built in a hidden folder and renamed; predictions go to a hidden
`.test_predictions_fold_<f>.partial` folder (removed by the next run, never read by the leaderboard), are renamed
into place, and count as done only once their summary_ssl.json is written.

Output folder layout (stable; the project's issues report numbers from it):
  benchmark.json                 dataset, configuration, plans, fold, budget, device, runs, draws, each draw's
                                 labeled cases
  draw_<k>/nnUNet_raw/<name>_draw<k>/  (k >= 2) the draw's raw dataset (links) with draw.json (its cases, seed)
  draw_<k>/nnUNet_preprocessed/  (k >= 2) the draw, preprocessed with the source's plans
  draw_<k>/logs/preprocess.log
  draw_<k>/run_<r>/records/<trainer>.json       one finished trainer (schema: RECORD_KEYS)
  draw_<k>/run_<r>/logs/<trainer>.{train,predict}.log
  draw_<k>/run_<r>/nnUNet_results/...           the trained models (nnU-Net's layout)
  draw_<k>/run_<r>/nnUNet_results/<Dataset>/<trainer>__<plans>__<conf>/test_predictions_fold_<f>/  predictions +
                                 summary_ssl.json
  draw_<k>/run_<r>/leaderboard.md, leaderboard.csv, paired_statistics.{csv,json}, dice_per_case.png,
                                 overlays.png, paired_overlays_<trainer>.png, report.html      this draw and
                                 run (leaderboard_of.json: of which
                                 records; rewritten only when they change)
  draw_all/...                   (--upper-bound) as a draw's: nnUNet_raw/<name>_all_labeled/, nnUNet_preprocessed/,
                                 run_<r>/records/<reference>.json, logs/, nnUNet_results/
  leaderboard.md, leaderboard.csv, repeats.json, paired_statistics.{csv,json}, dice_per_case.png,
  paired_differences.png, report.html
                                 all draws and runs (overlays and training curves: those of draw 1, run 1)
  draw_<k>/run_<r>/postprocessed_<KIND>/<trainer>/   (--postprocess) the postprocessed test cases + summary_ssl.json
                                 (redone when the predictions' summary is newer)
  postprocessed_<KIND>/leaderboard.md, ... report.html   (--postprocess) all draws and runs, postprocessed
"""
import json
import os
import shutil
import sys

from nnunet_ssl.evaluation.postprocessing import POSTPROCESSING
from nnunet_ssl.utilities.atomic import write_json
from nnunet_ssl.utilities.inputs import UserError
from nnunet_ssl.utilities.runner import run_logged

RECORD_KEYS = ("trainer", "dataset", "configuration", "fold", "epochs", "iterations_per_epoch", "device",
               "draw", "run", "labeled_cases", "n_labeled", "n_unlabeled", "n_test", "train_seconds", "s_per_iter",
               "peak_rss_gb", "peak_gpu_gb", "summary_file", "Dice_mean", "Dice_median", "failed_cases")
# benchmark.json keys that may change between calls
REPEATS = ("runs", "draws", "draw_labels", "labeled_cases", "pool_labels", "upper_bound")


class BenchmarkError(UserError):
    pass


def _run(cmd, log, env, **progress):
    """Run a command, its output to `log`; returns (peak RSS of the process tree's largest process in GB, s).
    `progress`: run_logged's epochs and progress, for a training."""
    return run_logged(cmd, log, env, BenchmarkError, **progress)


def _say(message: str) -> None:
    from tqdm import tqdm
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def _read_json(path: str) -> dict:
    """{} for a file that does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def child_env(out: str, roots: dict = None) -> dict:
    """The environment of the commands the benchmark runs: models go to `out`/nnUNet_results; nnU-Net finds the
    user's trainer folders (nnUNet_extTrainer) and the plugin's; `roots`: other nnUNet_raw / nnUNet_preprocessed
    (a draw's)."""
    from nnunet_ssl.utilities.paths import with_plugin_trainers
    return {**os.environ, **(roots or {}), "nnUNet_results": os.path.join(out, "nnUNet_results"),
            "nnUNet_extTrainer": with_plugin_trainers(os.environ.get("nnUNet_extTrainer"))}


def _planning_env(env: dict) -> dict:
    # nnU-Net 2.8's planner and preprocessor call torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0
    return {**env, "nnUNet_n_proc_DA": str(max(1, int(env.get("nnUNet_n_proc_DA") or 1)))}


def prepare_dataset(name: str, configuration: str, plans: str, log: str, env: dict, num_processes: int) -> None:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    from nnunet_ssl.data.pool import preprocess_unlabeled

    if not os.path.isfile(os.path.join(nnUNet_preprocessed, name, plans + ".json")):
        if plans != "nnUNetPlans":
            raise BenchmarkError(f"{name} has no plans {plans}: plan it first (stock planning makes nnUNetPlans)")
        # nnUNetv2_plan_and_preprocess -d takes integer ids
        _run(["nnUNetv2_plan_and_preprocess", "-d", str(convert_dataset_name_to_id(name)), "-c", configuration,
              "-np", str(num_processes), "-npfp", str(num_processes), "--verify_dataset_integrity"], log,
             _planning_env(env))
    preprocess_unlabeled(name, [configuration], plans, num_processes)


def draw_location(source: str, draw, draw_folder: str) -> tuple:
    """(dataset name, raw folder, nnU-Net roots) of labeled draw `draw` of `source` in `draw_folder`."""
    from nnunet_ssl.data.splits import draw_name

    name = draw_name(source, draw)
    roots = {"nnUNet_raw": os.path.join(draw_folder, "nnUNet_raw"),
             "nnUNet_preprocessed": os.path.join(draw_folder, "nnUNet_preprocessed")}
    return name, os.path.join(roots["nnUNet_raw"], name), roots


def _preprocessed(draw_folder: str) -> tuple:
    """The draw's record of its finished preprocessing and the "<plans> <configuration>" it lists."""
    done_file = os.path.join(draw_folder, "preprocessed.json")
    return done_file, _read_json(done_file).get("done", [])


def prepare_draw(source: str, draw: int, draw_folder: str, labels: str, configuration: str, plans: str,
                 num_processes: int) -> tuple:
    """Labeled draw `draw` (>= 2, or ALL_LABELED) of the raw dataset `source` in `draw_folder`: its own nnUNet_raw
    (the raw files linked, nnunet_ssl.data.splits.build_draw) and nnUNet_preprocessed, preprocessed with the
    source's plans (nnUNetv2_preprocess, then the unlabeled pool if it has one). Returns (dataset name, its raw
    folder, nnU-Net roots, record)."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    from nnunet_ssl.data.splits import SplitError, build_draw
    from nnunet_ssl.utilities.inputs import nnunet_folder

    name, raw, roots = draw_location(source, draw, draw_folder)
    try:
        record = build_draw(os.path.join(nnunet_folder("nnUNet_raw"), source), raw, draw, labels)
    except SplitError as e:
        raise BenchmarkError(f"draw {draw}: {e}") from None
    done_file, done = _preprocessed(draw_folder)
    if f"{plans} {configuration}" in done:
        return name, raw, roots, record
    source_pre = os.path.join(nnunet_folder("nnUNet_preprocessed"), source)
    pre = os.path.join(roots["nnUNet_preprocessed"], name)
    os.makedirs(pre, exist_ok=True)
    with open(os.path.join(source_pre, plans + ".json")) as f:  # the same plans; nnU-Net names the results folder
        write_json(os.path.join(pre, plans + ".json"), {**json.load(f), "dataset_name": name})  # after this name
    for copied in ("dataset.json", "dataset_fingerprint.json"):  # (the fingerprint: the source's, for reference)
        folder = raw if copied == "dataset.json" else source_pre
        if os.path.isfile(os.path.join(folder, copied)):
            with open(os.path.join(folder, copied)) as f:
                write_json(os.path.join(pre, copied), json.load(f))
    env = {**os.environ, **roots}
    log = os.path.join(draw_folder, "logs", "preprocess.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    _run(["nnUNetv2_preprocess", "-d", str(convert_dataset_name_to_id(name)), "-plans_name", plans, "-c",
          configuration, "-np", str(num_processes)], log, _planning_env(env))
    if record["unlabeled"]:
        _run([sys.executable, "-m", "nnunet_ssl", "preprocess-unlabeled", "-d", name, "-c", configuration, "-p",
              plans, "-np", str(num_processes)], log, env)
    write_json(done_file, {"done": done + [f"{plans} {configuration}"]})
    return name, raw, roots, record


def run_trainer(trainer: str, name: str, raw: str, sub: str, env: dict, info: dict, dataset_json: dict,
                nsd_tolerance: float, num_processes: int) -> dict:
    """Train (or resume), predict imagesTs and evaluate one trainer in the folder `sub` (records/, logs/,
    nnUNet_results/ of one draw and run); returns its record (records/<trainer>.json; kept if it exists).
    `info`: the record's budget, draw, run and counts."""
    from nnunet_ssl.evaluation.leaderboard import TEST_PREFIX
    from nnunet_ssl.evaluation.metrics import evaluate_folder

    configuration, fold, plans, device = info["configuration"], info["fold"], info["plans"], info["device"]
    where = f"{trainer} (draw {info['draw']}, run {info['run']})"
    record_file = record_path(sub, trainer)
    if os.path.isfile(record_file):
        _say(f"{where}: done (record {record_file}); delete the record to run it again")
        with open(record_file) as f:
            return json.load(f)
    model = os.path.join(sub, "nnUNet_results", name, f"{trainer}__{plans}__{configuration}")
    fold_folder = os.path.join(model, f"fold_{fold}")
    predictions = os.path.join(model, TEST_PREFIX + str(fold))
    stats_file = os.path.join(sub, "logs", f"{trainer}.stats.json")
    log = os.path.join(sub, "logs", f"{trainer}.train.log")
    stats = _read_json(stats_file)
    if not (os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth")) and "peak_rss_gb" in stats):
        _say(f"{where}: training {info['epochs']} epochs x {info['iterations_per_epoch']} iterations (log: {log})")
        cmd = [sys.executable, "-m", "nnunet_ssl", "train", name, configuration, str(fold), "-tr", trainer,
               "-p", plans, "--epochs", str(info["epochs"]), "--iters", str(info["iterations_per_epoch"]),
               "-device", device, "--stats-json", stats_file,
               "--save-every", "1"]  # a killed benchmark loses at most one epoch of a training (nnU-Net: 50)
        if info.get("val_iterations"):
            cmd += ["--val-iters", str(info["val_iterations"])]
        if info.get("pool_labels"):
            cmd += ["--pool-labels", info["pool_labels"]]
        if str(fold) == "all":  # its validation cases were trained on: nnU-Net's final validation tells nothing
            cmd.append("--no-val")
        if os.path.isfile(os.path.join(fold_folder, "checkpoint_latest.pth")):
            cmd.append("--c")
        elif os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth")):
            cmd.append("--overwrite")  # this benchmark's own model, killed before its timing was written
        peak_rss_gb, _ = _run(cmd, log, env, epochs=info["epochs"], progress=f"training {where}")
        stats = {**_read_json(stats_file), "peak_rss_gb": peak_rss_gb}
        write_json(stats_file, stats)
        shutil.rmtree(predictions, ignore_errors=True)  # of an older model

    if not os.path.isfile(os.path.join(predictions, "summary_ssl.json")):
        _say(f"{where}: predicting {os.path.join(raw, 'imagesTs')}")
        # hidden, and not named test_predictions_fold_*: the leaderboard never reads it
        partial = os.path.join(model, "." + TEST_PREFIX + str(fold) + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        workers = ["-npp", "0", "-nps", "0"] if device == "cpu" else []
        _run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", partial, "-d", name, "-c",
              configuration, "-f", str(fold), "-tr", trainer, "-p", plans, "-device", device,
              "--disable_progress_bar"] + workers, os.path.join(sub, "logs", f"{trainer}.predict.log"), env)
        shutil.rmtree(predictions, ignore_errors=True)
        os.replace(partial, predictions)
        # evaluated in place (the summary names these files); without its summary the folder is predicted
        # again by the next run
        evaluate_folder(os.path.join(raw, "labelsTs"), predictions, dataset_json,
                        os.path.join(predictions, "summary_ssl.json"), nsd_tolerance, num_processes)
    with open(os.path.join(predictions, "summary_ssl.json")) as f:
        summary = json.load(f)
    record = {"trainer": trainer, "dataset": name, **{k: info[k] for k in RECORD_KEYS[2:12]},
              "n_test": summary["n_cases"], "train_seconds": stats["train_seconds"],
              "s_per_iter": stats["s_per_iter"], "peak_rss_gb": stats["peak_rss_gb"],
              "peak_gpu_gb": stats["peak_gpu_gb"], "summary_file": os.path.join(predictions, "summary_ssl.json"),
              "Dice_mean": summary["foreground"]["Dice"]["mean"],
              "Dice_median": summary["foreground"]["Dice"]["median"], "failed_cases": summary["failed_cases"]}
    if stats.get("pool_audit"):  # the last epoch's pool audit (--pool-labels)
        record["pool_audit"] = stats["pool_audit"]
    write_json(record_file, record)
    _say(f"{where}: mean Dice {record['Dice_mean']:.4f}, median {record['Dice_median']:.4f}, "
         f"{record['failed_cases']} failed, {record['s_per_iter']:.3f} s/iter")
    return record


def existing_draw(source: str, draw, draw_folder: str, configuration: str, plans: str):
    """prepare_draw's result for a draw prepared before (its raw dataset and preprocessing complete), else None;
    builds and runs nothing."""
    name, raw, roots = draw_location(source, draw, draw_folder)
    record = _read_json(os.path.join(raw, "draw.json"))
    done = _preprocessed(draw_folder)[1]
    return (name, raw, roots, record) if record and f"{plans} {configuration}" in done else None


def record_path(sub: str, trainer: str) -> str:
    """The record of `trainer` in the folder `sub` of one draw and run."""
    return os.path.join(sub, "records", f"{trainer}.json")


def postprocessed_summary(record: dict, out: str, kind: str, raw: str, dataset_json: dict, nsd_tolerance: float,
                          num_processes: int) -> str:
    """The summary file of `record`'s test predictions postprocessed by `kind`, in <draw_k/run_r>/postprocessed_<kind>/
    <trainer>/: written when missing or older than the predictions' summary, then evaluated; the predictions
    themselves are left as they are."""
    from nnunet_ssl.evaluation.metrics import evaluate_folder
    from nnunet_ssl.evaluation.postprocessing import postprocess_folder

    folder = os.path.join(run_folder(out, record["draw"], record["run"]), f"postprocessed_{kind}", record["trainer"])
    summary_file = os.path.join(folder, "summary_ssl.json")
    if os.path.isfile(summary_file) and os.path.getmtime(summary_file) >= os.path.getmtime(record["summary_file"]):
        return summary_file
    postprocess_folder(os.path.dirname(record["summary_file"]), folder, kind, dataset_json)
    evaluate_folder(os.path.join(raw, "labelsTs"), folder, dataset_json, summary_file, nsd_tolerance, num_processes)
    return summary_file


def run_folder(out: str, draw: int, run: int) -> str:
    """The folder of one draw and run of the benchmark in `out`."""
    return os.path.join(out, f"draw_{draw}", f"run_{run}")


def run_benchmark(dataset: str, configuration: str, trainers, epochs: int, iterations: int, fold: str = "all",
                  out: str = None, val_iterations: int = None, device: str = "cpu", plans: str = "nnUNetPlans",
                  nsd_tolerance: float = 1.0, num_processes: int = 2, reference: str = None, runs: int = 1,
                  draws: int = 1, draw_labels: str = None, pool_labels: str = None, upper_bound: bool = False,
                  report_only: bool = False, postprocess: str = None) -> str:
    """Run (or resume) the benchmark; returns the leaderboard Markdown. `reference`: the trainer the others are
    compared with case by case (default: nnUNetTrainer if listed, else the first). `runs`: independent trainings
    of each trainer per draw; `draws`: labeled draws (1: the dataset as given; more need `draw_labels`, a folder
    with the labels of every training case). `pool_labels`: labels of unlabeled cases, for every training's pool
    audit (nnunet_ssl.evaluation.pool_audit; the last epoch's summary goes into the record). `upper_bound`: the
    reference also trains with every training case labeled (labels from `draw_labels`), once per run.
    `report_only`: prepare, train and predict nothing; the tables of the records the folder has (of these trainers,
    draws and runs), the missing ones named (a long benchmark's state while it runs, or a partial matrix).
    `postprocess`: also the tables of the test predictions postprocessed by one of nnU-Net's postprocessings
    (POSTPROCESSING), the same for every trainer, in postprocessed_<kind>/."""
    from tqdm import tqdm

    from nnunet_ssl.evaluation.leaderboard import (TEST_PREFIX, dataset_counts, make_row, markdown_table,
                                                   repeats_markdown, statistics_markdown, write_leaderboard)
    from nnunet_ssl.evaluation.overlay import write_contact_sheet
    from nnunet_ssl.evaluation.statistics import (default_reference, paired_statistics, pooled_statistics,
                                                  repeat_summary)
    from nnunet_ssl.data.splits import ALL_LABELED, labeled_case_ids
    from nnunet_ssl.core.trainer import is_semi_supervised
    from nnunet_ssl.utilities.inputs import dataset_name, nnunet_folder, trainer_class

    name = dataset_name(dataset, needs=("nnUNet_raw",))
    raw = os.path.join(nnunet_folder("nnUNet_raw"), name)
    for trainer in trainers:  # a misspelled name fails now, not after the trainers before it have trained
        trainer_class(trainer)
    if reference is not None and reference not in trainers:
        raise BenchmarkError(f"--reference {reference} is not one of the trainers (-tr {' '.join(trainers)})")
    reference = reference or default_reference(list(trainers))
    if postprocess is not None and postprocess not in POSTPROCESSING:
        raise BenchmarkError(f"--postprocess {postprocess}: one of {', '.join(POSTPROCESSING)}")
    if runs < 1 or draws < 1:
        raise BenchmarkError(f"--runs {runs} --draws {draws}: both must be at least 1")
    if draws > 1 and not draw_labels:
        raise BenchmarkError(f"--draws {draws}: draws 2.. label other cases of {raw}, whose unlabeled cases have no "
                             f"labels there: give --draw-labels FOLDER with the labels of every training case (e.g. "
                             f"labelsTr of the same source converted without --labeled; see the README)")
    if upper_bound and not draw_labels:
        raise BenchmarkError(f"--upper-bound labels every training case of {raw}, whose unlabeled cases have no "
                             f"labels there: give --draw-labels FOLDER with the labels of every training case")
    if upper_bound and is_semi_supervised(reference):
        raise BenchmarkError(f"--upper-bound trains the reference trainer {reference} with every case labeled and no "
                             f"unlabeled pool: the reference must be a supervised trainer (e.g. --reference "
                             f"nnUNetTrainer)")
    if pool_labels and not os.path.isdir(pool_labels):
        raise BenchmarkError(f"--pool-labels {pool_labels}: not a folder")
    pool_labels = os.path.abspath(pool_labels) if pool_labels else None
    for sub in ("imagesTs", "labelsTs", "imagesUnlabeled"):
        if not os.path.isdir(os.path.join(raw, sub)):
            raise BenchmarkError(f"{os.path.join(raw, sub)} does not exist: the benchmark needs a test set "
                                 f"(imagesTs + labelsTs) and an unlabeled pool (imagesUnlabeled)")
    out = os.path.abspath(out or f"nnunet_ssl_benchmark/{name}__{configuration}__{epochs}x{iterations}__fold_{fold}")
    setup = {"dataset": name, "configuration": configuration, "plans": plans, "fold": str(fold), "epochs": epochs,
             "iterations_per_epoch": iterations, "val_iterations": val_iterations, "device": device,
             "nsd_tolerance_mm": nsd_tolerance}
    setup_file = os.path.join(out, "benchmark.json")
    if report_only and not os.path.isfile(setup_file):
        raise BenchmarkError(f"--report-only: {out} holds no benchmark ({setup_file} does not exist)")
    if os.path.isfile(setup_file):
        with open(setup_file) as f:
            previous = {k: v for k, v in json.load(f).items() if k not in REPEATS}
        if previous != setup:
            changed = {k: (previous.get(k), v) for k, v in setup.items() if previous.get(k) != v}
            raise BenchmarkError(f"{setup_file}: this folder holds a benchmark with other settings {changed}; "
                                 f"use another output folder (-o) for another budget")
    if os.path.isdir(os.path.join(out, "records")):
        raise BenchmarkError(f"{os.path.join(out, 'records')}: this folder holds a benchmark of an older layout "
                             f"(one run, records/ at the top; now draw_<k>/run_<r>/records/); it is left as it is: "
                             f"use another output folder (-o)")
    if not report_only:  # the folder's setup is that of the last call that trained
        os.makedirs(out, exist_ok=True)
        write_json(setup_file, {**setup, "runs": runs, "draws": draws,
                                "draw_labels": os.path.abspath(draw_labels) if draw_labels else None,
                                "pool_labels": pool_labels, "upper_bound": upper_bound})
        prepare_dataset(name, configuration, plans, os.path.join(out, "draw_1", "logs", "preprocess.log"),
                        child_env(out), num_processes)
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    datasets = {1: (name, raw, None, {"labeled": sorted(labeled_case_ids(raw, dataset_json))})}
    counts = {1: dataset_counts(name)}
    draw_keys = list(range(1, draws + 1)) + ([ALL_LABELED] if upper_bound else [])
    for draw in draw_keys[1:]:
        if report_only:
            datasets[draw] = existing_draw(name, draw, os.path.join(out, f"draw_{draw}"), configuration, plans)
            if datasets[draw] is None:
                del datasets[draw]
                continue
        else:
            datasets[draw] = prepare_draw(name, draw, os.path.join(out, f"draw_{draw}"), draw_labels,
                                          configuration, plans, num_processes)
        counts[draw] = {"n_labeled": len(datasets[draw][3]["labeled"]),
                        "n_unlabeled": len(datasets[draw][3]["unlabeled"])}
    if not report_only:
        write_json(setup_file, {**_read_json(setup_file), "labeled_cases": {
            str(d): v[3]["labeled"] for d, v in datasets.items() if d != ALL_LABELED}})

    records, missing = [], []
    jobs = [(run, draw) for run in range(1, runs + 1) for draw in draw_keys]  # every draw's run 1 first
    for run, draw in tqdm(jobs, desc="benchmark (run, draw)", disable=len(jobs) == 1 or report_only):
        sub = run_folder(out, draw, run)
        wanted = [reference] if draw == ALL_LABELED else trainers
        if report_only:
            done = [t for t in wanted if draw in datasets and os.path.isfile(record_path(sub, t))]
            missing += [f"{t} (draw {draw}, run {run})" for t in wanted if t not in done]
            records += [_read_json(record_path(sub, t)) for t in done]
            continue
        draw_dataset, draw_raw, roots, draw_record = datasets[draw]
        for folder in ("records", "logs", "nnUNet_results"):
            os.makedirs(os.path.join(sub, folder), exist_ok=True)
        info = {"configuration": configuration, "fold": str(fold), "epochs": epochs, "iterations_per_epoch": iterations,
                "device": device, "draw": draw, "run": run, "labeled_cases": draw_record["labeled"], **counts[draw],
                "plans": plans, "val_iterations": val_iterations,
                "pool_labels": None if draw == ALL_LABELED else pool_labels}
        for trainer in wanted:
            records.append(run_trainer(trainer, draw_dataset, draw_raw, sub, child_env(sub, roots), info,
                                       dataset_json, nsd_tolerance, num_processes))

    budget = f"{epochs} epochs x {iterations} iterations, fold {fold}, {device}"
    command = benchmark_command(name, configuration, trainers, epochs, iterations, fold, out, val_iterations,
                                device, plans, nsd_tolerance, num_processes, reference, runs, draws, draw_labels,
                                pool_labels, upper_bound, postprocess)

    if report_only and not records:
        raise BenchmarkError(f"--report-only: {out} has no record of {', '.join(trainers)} yet")

    def row_of(record):
        return make_row(_read_json(record["summary_file"]), **{k: record[k] for k in RECORD_KEYS if k not in
                        ("summary_file", "Dice_mean", "Dice_median", "failed_cases", "labeled_cases")},
                        evaluation=f"test (fold {fold})", folds=str(fold), folds_missing="", s_per_epoch=None,
                        model_folder=os.path.join(run_folder(out, record["draw"], record["run"]), "nnUNet_results",
                                                  record["dataset"], f"{record['trainer']}__{plans}__{configuration}"))

    def report(records, kind):
        """The tables of `records`. kind None: of the predictions as nnUNetv2_predict wrote them, each draw and run's
        leaderboard, overlays and paired sheets in its folder and the tables of all at the top; else of the
        predictions postprocessed by `kind`: the tables of all in postprocessed_<kind>/."""
        # the upper bound of each run, named apart from the reference it is trained as
        upper = {r["run"]: {**row_of(r), "trainer": f"{reference} (all {r['n_labeled']} labeled)"}
                 for r in records if r["draw"] == ALL_LABELED}

        def upper_beside(draw, run):
            """The upper bound of `run` as a row of `draw`: the statistics pair it with that draw's reference."""
            return [{**upper[run], "dataset": datasets[draw][0], "draw": draw}] if run in upper else []

        rows, overlays = [], {}
        for run, draw in jobs:
            if draw == ALL_LABELED or draw not in datasets:
                continue
            mine = [row_of(r) for r in records if (r["draw"], r["run"]) == (draw, run)]
            rows += mine
            if kind is None:
                overlays.update(write_run_report(run, draw, mine, upper_beside(draw, run)))
        test_sets = {tuple(sorted(r["case_ids"])): (r["trainer"], r["draw"], r["run"])
                     for r in rows + list(upper.values())}
        if len(test_sets) > 1:  # one test set for every trainer, draw and run: anything else is a broken benchmark
            raise BenchmarkError(f"{out}: the records were evaluated on different test sets: " + "; ".join(
                f"{t} (draw {d}, run {r}): {len(cases)} cases, e.g. {list(cases[:2])}"
                for cases, (t, d, r) in test_sets.items()))
        paired_rows = rows + [u for run, draw in jobs if draw != ALL_LABELED and draw in datasets
                              for u in upper_beside(draw, run)]
        statistics = paired_statistics(paired_rows, reference) + pooled_statistics(paired_rows, reference)
        rows += list(upper.values())
        repeats = repeat_summary(rows)
        env = child_env(out)
        logged = [c for draw in draw_keys for c in logged_commands(os.path.join(out, f"draw_{draw}"), ())] + \
            [c for run, draw in jobs for c in logged_commands(run_folder(out, draw, run), trainers)]
        sheets = {} if kind is not None else {  # of the predictions as written
            **({f"Overlays of draw 1, run 1: test cases, worst of {reference} first (each draw_<k>/run_<r>/ has its "
                f"own)": overlays[(1, 1)]} if (1, 1) in overlays else {}),
            **{f"Draw 1, run 1: {t} against {reference}, its largest losses, then its largest gains": sheet
               for t in trainers if os.path.isfile(sheet := os.path.join(run_folder(out, 1, 1),
                                                                         f"paired_overlays_{t}.png"))}}
        evaluated = "" if kind is None else f", test predictions postprocessed: {POSTPROCESSING[kind]}"
        files = write_leaderboard(
            rows, out if kind is None else os.path.join(out, f"postprocessed_{kind}"),
            f"Benchmark: {name} {configuration}, {budget}, {draws} draw(s) x {runs} run(s){evaluated}", statistics,
            sheets,
            training_curves={f"{r['trainer']}, draw {r['draw']}, run 1": os.path.join(r["model_folder"], f"fold_{fold}")
                             for r in rows if r["run"] == 1 and r["draw"] in (1, ALL_LABELED)},
            commands=[command, f"# which ran, with nnUNet_results=<draw_k/run_r>/nnUNet_results (draws 2.. and "
                               f"all: nnUNet_raw and nnUNet_preprocessed in draw_k/) and "
                               f"nnUNet_extTrainer={env['nnUNet_extTrainer']}:"] + logged,
            repeats=repeats)
        if (1, 1) in overlays:
            files["overlays"] = overlays[(1, 1)]
        table = markdown_table(rows)
        print(("" if kind is None else f"\n# Postprocessed: {POSTPROCESSING[kind]}\n") +
              f"\n{repeats_markdown(repeats, statistics)}\n\n{table}" +
              (f"\n\n{statistics_markdown(statistics)}" if statistics else ""))
        if missing and kind is None:  # said once, not again under the postprocessed tables
            print(f"\nnot in the tables (--report-only; no record yet): {', '.join(missing)}")
        print("\n" + "\n".join(f"{k}: {v}" for k, v in files.items()))
        return table

    def write_run_report(run, draw, mine, beside) -> dict:
        """The leaderboard, overlays and paired sheets of one draw and run in its folder, written again only when
        its records or trainers changed (an added run leaves the others as they are); {(draw, run): overlays}."""
        draw_dataset, draw_raw = datasets[draw][:2]
        sub = run_folder(out, draw, run)
        present = [t for t in trainers if any(r["trainer"] == t for r in mine)]  # all of them unless --report-only
        if reference not in present:  # nothing to pair with nor to order the overlays by
            return {}
        overlays = os.path.join(sub, "overlays.png")
        stamp = {"trainers": present, "reference": reference, "paired_sheets": True, "records": [
            os.stat(record_path(sub, t)).st_mtime_ns for t in present],
            "upper_bound": os.stat(record_path(run_folder(out, ALL_LABELED, run), reference)).st_mtime_ns
            if beside else None}
        stamp_file = os.path.join(sub, "leaderboard_of.json")
        if _read_json(stamp_file) == stamp and os.path.isfile(os.path.join(sub, "report.html")):
            return {(draw, run): overlays}
        shown = [reference] + [t for t in present if t != reference]  # worst cases of the reference first
        predictions = {t: os.path.join(sub, "nnUNet_results", draw_dataset, f"{t}__{plans}__{configuration}",
                                       TEST_PREFIX + str(fold)) for t in shown}
        # the upper bound last: on the reference's worst cases, what every label would have given
        columns = shown + [u["trainer"] for u in beside]
        predictions.update({u["trainer"]: os.path.join(u["model_folder"], TEST_PREFIX + str(fold)) for u in beside})
        test_images, test_labels = os.path.join(draw_raw, "imagesTs"), os.path.join(draw_raw, "labelsTs")
        write_contact_sheet(test_images, test_labels, [predictions[t] for t in columns], columns, dataset_json,
                            overlays)
        figures = {f"Overlays: test cases, worst of {reference} first": overlays}
        for trainer in shown[1:]:  # where each trainer differs most from the reference: what its gain is made of
            paired_sheet = os.path.join(sub, f"paired_overlays_{trainer}.png")
            if write_contact_sheet(test_images, test_labels, [predictions[reference], predictions[trainer]],
                                   [reference, trainer], dataset_json, paired_sheet, order="difference"):
                figures[f"{trainer} against {reference}: its largest losses, then its largest gains"] = paired_sheet
        board = mine + beside
        write_leaderboard(board, sub, f"Benchmark: {draw_dataset} {configuration}, {budget}, draw {draw}, run {run}",
                          paired_statistics(board, reference), figures,
                          commands=[command] + logged_commands(sub, present))
        write_json(stamp_file, stamp)
        return {(draw, run): overlays}

    table = report(records, None)
    if postprocess:
        _say(f"postprocessing the test predictions ({postprocess}) and evaluating them again")
        table = report([{**r, "summary_file": postprocessed_summary(r, out, postprocess, raw, dataset_json,
                                                                    nsd_tolerance, num_processes)}
                        for r in records], postprocess)
    return table


def benchmark_command(dataset, configuration, trainers, epochs, iterations, fold, out, val_iterations, device,
                      plans, nsd_tolerance, num_processes, reference, runs=1, draws=1, draw_labels=None,
                      pool_labels=None, upper_bound=False, postprocess=None) -> list:
    """The `nnunet_ssl benchmark` command line that runs (or resumes) exactly this benchmark."""
    cmd = ["nnunet_ssl", "benchmark", "-d", dataset, "-c", configuration, "-tr", *trainers, "--epochs", epochs,
           "--iters", iterations] + (["--val-iters", val_iterations] if val_iterations else []) + \
        ["-f", fold, "-p", plans, "-o", out, "-device", device, "--nsd-tolerance", nsd_tolerance,
         "-np", num_processes, "--reference", reference, "--runs", runs, "--draws", draws] + \
        (["--draw-labels", os.path.abspath(draw_labels)] if draw_labels else []) + \
        (["--pool-labels", pool_labels] if pool_labels else []) + (["--upper-bound"] if upper_bound else []) + \
        (["--postprocess", postprocess] if postprocess else [])
    return [str(c) for c in cmd]


def logged_commands(folder: str, trainers) -> list:
    """The commands the benchmark ran in `folder` (a draw's or a run's), as its logs record them (`$ ...` lines:
    preprocessing, then each trainer's training and prediction, resumed runs included)."""
    commands = []
    for log in ["preprocess.log"] + [f"{t}.{step}.log" for t in trainers for step in ("train", "predict")]:
        path = os.path.join(folder, "logs", log)
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
    p.add_argument("--runs", type=int, default=1, help="independent trainings of every trainer on each draw "
                                                       "(default: 1); more can be added later with the same -o")
    p.add_argument("--draws", type=int, default=1,
                   help="labeled draws: the same number of labeled cases, drawn with seeds 2, 3, ... from the "
                        "training cases (imagesTr + imagesUnlabeled); the test set stays; draw 1 is the dataset as "
                        "given (default: 1)")
    p.add_argument("--pool-labels", default=None, metavar="FOLDER",
                   help="labels of unlabeled cases (e.g. the --draw-labels folder): every training audits its pool "
                        "after each epoch (Dice and predicted / true volume of its inference weights; pool_audit.json "
                        "and .png in the fold folder, the last epoch in the record); never used for training")
    p.add_argument("--draw-labels", default=None, metavar="FOLDER",
                   help="with --draws > 1: the labels (<case><file_ending>) of every training case, e.g. labelsTr "
                        "of the same source converted without --labeled; only those of each draw's labeled cases "
                        "are used")
    p.add_argument("--upper-bound", action="store_true",
                   help="also train the reference trainer (a supervised one) with every training case labeled (labels "
                        "from --draw-labels), once per run: the fully supervised row, paired with each draw's "
                        "reference (in draw_all/)")
    p.add_argument("--report-only", action="store_true",
                   help="prepare, train and predict nothing: write the tables of the records the folder already has "
                        "(of -tr, the draws and runs), and name the missing ones (to read a long benchmark while it "
                        "runs, or a partial matrix)")
    p.add_argument("--postprocess", default=None, choices=list(POSTPROCESSING),
                   help="also evaluate every trainer's test predictions after one of nnU-Net's postprocessings "
                        "(largest-foreground: " + POSTPROCESSING["largest-foreground"] + "; largest-per-class: " +
                        POSTPROCESSING["largest-per-class"] + "), the same for all, fixed beforehand (e.g. one lesion "
                        "per image), not chosen on the test set: the tables of all draws and runs in "
                        "OUT/postprocessed_<kind>/; the predictions and the other tables stay as they are; with "
                        "--report-only too")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    run_benchmark(a.d, a.c, a.tr, a.epochs, a.iters, a.f, a.o, a.val_iters, a.device, a.p, a.nsd_tolerance, a.np,
                  a.reference, a.runs, a.draws, a.draw_labels, a.pool_labels, a.upper_bound, a.report_only,
                  a.postprocess)
