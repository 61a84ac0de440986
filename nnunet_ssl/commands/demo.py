"""`nnunet_ssl demo`: the main job on an embedded default, no download.

The synthetic task (nnunet_ssl.data.synthetic, TASK below) is built so that the unlabeled images carry
information the labeled ones lack: the 4 labeled cases show only small, clearly visible lesions, while the
unlabeled pool and the test set span small to large (up to about 2.5 times the largest labeled radius, beyond
nnU-Net's scale augmentation) and clear to barely visible ones. A supervised model learns "lesion" at the
labeled cases' scale only; a semi-supervised one also sees the whole range of sizes in the unlabeled batches,
and its pseudo-label and consistency terms can carry what it learned from the small lesions to the larger ones
(the pool holds every size in between).

The demo plans and preprocesses the dataset with stock nnU-Net, preprocesses the unlabeled pool, trains each
trainer with the same budget (fold `all`: 4 labeled cases are too few for 5 folds), predicts the test set with
stock nnUNetv2_predict, and writes the table, the paired statistics, a contact sheet of the worst test cases and
report.html.
"""
import json
import os
import sys
import time

DEMO_DATASET_ID = 990
# nnUNetTrainer and SGRS, whose gain on this task the README measures; the strongest on PH2, DualNet, costs about
# 7 nnUNetTrainer steps per step, too slow for a first try on 2 CPU cores (-tr runs it)
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerSGRS")
DEFAULT_EPOCHS, DEFAULT_ITERATIONS = 8, 25
CASES = {"n_labeled": 4, "n_unlabeled": 40, "n_test": 40}
# the labeled cases: small (radius 0.1 to 0.2 of the side) and clear lesions; the pool and the test set: radius
# 0.1 to 0.45, faintness 0 to 1; each group spread evenly over its ranges, so that every seed poses the same task
TASK = {"labeled_faintness": (0.0, 0.2), "labeled_lesion_size": (0.1, 0.2), "lesion_size": (0.1, 0.45),
        "even_spread": True}
# --quick: the whole pipeline on a tiny dataset (the test suite runs it); its numbers mean nothing
QUICK = {"epochs": 1, "iterations": 2, "cases": {"n_labeled": 4, "n_unlabeled": 6, "n_test": 3}}
# what the demo writes into its --out folder (--overwrite removes these, and only these)
DEMO_OUTPUTS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "results", "demo_results.md",
                "demo_log.txt")


def demo_environment(out: str) -> dict:
    from nnunet_ssl.utilities.paths import ensure_ext_trainer_env

    env = {"nnUNet_raw": os.path.join(out, "nnUNet_raw"),
           "nnUNet_preprocessed": os.path.join(out, "nnUNet_preprocessed"),
           "nnUNet_results": os.path.join(out, "nnUNet_results")}
    for k, v in env.items():
        os.environ[k] = v
    ensure_ext_trainer_env()  # added to the user's own nnUNet_extTrainer folders, if any
    for k, v in {"nnUNet_compile": "f", "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "1"}.items():
        os.environ.setdefault(k, v)
    return env


def claim_output_folder(out: str, overwrite: bool) -> None:
    """The demo trains from scratch into `out`: an earlier demo's models and results there are kept unless the
    user asks for them to be replaced."""
    import shutil

    from nnunet_ssl.utilities.inputs import UserError

    earlier = [name for name in DEMO_OUTPUTS if os.path.exists(os.path.join(out, name))]
    if earlier and not overwrite:
        raise UserError(f"{out} holds an earlier demo ({', '.join(earlier)}): use another --out, or --overwrite to "
                        f"replace it")
    for name in earlier:
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out, exist_ok=True)


def results_table(rows, statistics, budget: str) -> str:
    """The demo's Markdown table (mean / median test Dice, Dice per label, failed cases, training time) and one
    line per SSL trainer with its paired difference to the reference."""
    labels = list(rows[0]["per_label_dice"])
    lines = [f"Test-set Dice on {rows[0]['n_cases']} held-out synthetic cases ({budget})", "",
             "| trainer | mean Dice | median Dice | " + " | ".join(labels) + " | cases < 0.8 | train time (s) |",
             "|---" * (len(labels) + 5) + "|"]
    for r in rows:
        lines.append(f"| {r['trainer']} | {r['Dice_mean']:.4f} | {r['Dice_median']:.4f} | "
                     + " | ".join(f"{r['per_label_dice'][k]:.4f}" for k in labels)
                     + f" | {r['failed_cases']} | {r['train_seconds']:.0f} |")
    for s in statistics:
        lines.append(f"\n{s['trainer']} - {s['reference']}: {100 * s['mean_difference']:+.1f} Dice points "
                     f"(95% CI {100 * s['ci_low']:+.1f} to {100 * s['ci_high']:+.1f}, Wilcoxon p = "
                     f"{s['wilcoxon_p']:.3f}), {s['better']} cases better and {s['worse']} worse by > 5 points, "
                     f"failed cases rescued {s['rescued']}, newly failed {s['newly_failed']}")
    return "\n".join(lines)


def run_demo(out: str = "nnunet_ssl_demo", epochs: int = None, iters: int = None, device: str = "cpu", dim: int = 2,
             overwrite: bool = False, trainers=None, seed: int = 0, quick: bool = False) -> str:
    """Run the demo into `out`; returns the results table."""
    from nnunet_ssl.data.pool import preprocess_unlabeled
    from nnunet_ssl.data.synthetic import write_synthetic_dataset
    from nnunet_ssl.evaluation.leaderboard import make_row, write_leaderboard
    from nnunet_ssl.evaluation.metrics import evaluate_folder
    from nnunet_ssl.evaluation.overlay import write_contact_sheet
    from nnunet_ssl.evaluation.statistics import paired_statistics
    from nnunet_ssl.utilities.atomic import write_text
    from nnunet_ssl.utilities.inputs import UserError, trainer_class
    from nnunet_ssl.utilities.runner import run_logged

    trainers = list(trainers or TRAINERS)
    for trainer in trainers:  # a misspelled name fails now, not after the trainers before it have trained
        trainer_class(trainer)
    epochs = epochs or (QUICK["epochs"] if quick else DEFAULT_EPOCHS)
    iters = iters or (QUICK["iterations"] if quick else DEFAULT_ITERATIONS)
    out = os.path.abspath(out)
    claim_output_folder(out, overwrite)
    env = demo_environment(out)
    log = os.path.join(out, "demo_log.txt")
    configuration = "2d" if dim == 2 else "3d_fullres"
    commands = []

    def run(cmd, progress=None, **extra_env):
        cmd = [str(c) for c in cmd]
        print("$ " + " ".join(cmd), flush=True)
        commands.append(cmd)
        return run_logged(cmd, log, {**os.environ, **extra_env}, error=UserError, epochs=epochs, progress=progress)

    t0 = time.time()
    folder = write_synthetic_dataset(env["nnUNet_raw"], DEMO_DATASET_ID, f"SSLDemo{dim}D", dim=dim, seed=seed,
                                     **TASK, **(QUICK["cases"] if quick else CASES))
    print(f"Synthetic dataset: {folder}")
    run(["nnUNetv2_plan_and_preprocess", "-d", DEMO_DATASET_ID, "-c", configuration, "-np", "2",
         "--verify_dataset_integrity"],
        # nnU-Net 2.8's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0
        nnUNet_n_proc_DA=str(max(1, int(os.environ["nnUNet_n_proc_DA"]))))
    preprocess_unlabeled(DEMO_DATASET_ID, [configuration], num_processes=2)

    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    label_names = {str(v): k for k, v in dataset_json["labels"].items()}
    rows, predictions = [], []
    for trainer in trainers:
        _, train_seconds = run([sys.executable, "-m", "nnunet_ssl", "train", DEMO_DATASET_ID, configuration, "all",
                                "-tr", trainer, "--epochs", epochs, "--iters", iters, "-device", device, "--no-val"],
                                progress=f"training {trainer}")
        pred = os.path.join(out, "predictions", trainer)
        run(["nnUNetv2_predict", "-i", os.path.join(folder, "imagesTs"), "-o", pred, "-d", DEMO_DATASET_ID,
             "-c", configuration, "-f", "all", "-tr", trainer, "-device", device, "-npp", "0", "-nps", "0",
             "--disable_progress_bar"])
        summary = evaluate_folder(os.path.join(folder, "labelsTs"), pred, dataset_json,
                                  os.path.join(pred, "summary_ssl.json"), num_processes=1)
        model = os.path.join(env["nnUNet_results"], os.path.basename(folder), f"{trainer}__nnUNetPlans__{configuration}")
        rows.append(make_row(summary, trainer=trainer, dataset=os.path.basename(folder),
                             n_labeled=len(os.listdir(os.path.join(folder, "labelsTr"))),
                             n_unlabeled=len(os.listdir(os.path.join(folder, "imagesUnlabeled"))),
                             evaluation="test (fold all)", folds="all", folds_missing="", model_folder=model,
                             train_seconds=train_seconds, Dice_mean=summary["foreground"]["Dice"]["mean"],
                             per_label_dice={label_names[k.strip("()").split(",")[0]]: v["Dice"]["mean"]
                                             for k, v in summary["per_label"].items()}))
        predictions.append(pred)

    budget = f"{epochs} epochs x {iters} iterations, fold all, {device}"
    statistics = paired_statistics(rows)
    table = results_table(rows, statistics, budget)
    results = os.path.join(out, "results")
    os.makedirs(results, exist_ok=True)
    overlays = os.path.join(results, "overlays.png")
    write_contact_sheet(os.path.join(folder, "imagesTs"), os.path.join(folder, "labelsTs"), predictions, trainers,
                        dataset_json, overlays)
    files = write_leaderboard(rows, results, f"nnunet_ssl demo: {os.path.basename(folder)} {configuration}, {budget}",
                              statistics, figures={"Overlays (worst cases of the reference first)": overlays},
                              commands=[[sys.executable, "-m", "nnunet_ssl"] + sys.argv[1:]] + commands)
    write_text(os.path.join(out, "demo_results.md"), table + "\n")
    print("\n" + table + "\n")
    print(f"Everything is in {out}:\n  raw data      {env['nnUNet_raw']}\n  preprocessed  {env['nnUNet_preprocessed']}"
          f"\n  models        {env['nnUNet_results']}\n  predictions   {os.path.join(out, 'predictions')}"
          f"\n  table         {os.path.join(out, 'demo_results.md')}\n  overlays      {overlays}"
          f"\n  report        {files['report']}\n  command log   {log}"
          f"\nTotal time {time.time() - t0:.0f} s")
    return table
