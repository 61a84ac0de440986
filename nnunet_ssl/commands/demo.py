"""`nnunet_ssl demo`: the main job on an embedded default, no download.

Writes a synthetic semi-supervised dataset (4 labeled, 40 unlabeled, 10 labeled test cases), plans and
preprocesses it with stock nnU-Net, preprocesses the unlabeled pool, trains nnUNetTrainer and
nnUNetTrainerMeanTeacher with the same budget (fold `all`: 4 labeled cases are too few for 5 folds),
predicts the test set with stock nnUNetv2_predict and prints Dice per trainer.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

DEMO_DATASET_ID = 990
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerMeanTeacher")


def _run(cmd, log, **env):
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env})
    if result.returncode != 0:
        sys.exit(f"command failed (exit {result.returncode}): {' '.join(cmd)}\nsee {log}")


# what the demo writes into its --out folder (--overwrite removes these, and only these)
DEMO_OUTPUTS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "demo_results.md",
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


def dice_summary(summary_file: str) -> dict:
    with open(summary_file) as f:
        summary = json.load(f)
    per_case = [np.nanmean([m["Dice"] for m in case["metrics"].values()]) for case in summary["metric_per_case"]]
    return {"mean": float(summary["foreground_mean"]["Dice"]), "median": float(np.median(per_case)),
            "per_label": {k: float(v["Dice"]) for k, v in summary["mean"].items()},
            "failed": int(np.sum(np.array(per_case) < 0.8)), "n": len(per_case)}


def run_demo(out: str = "nnunet_ssl_demo", epochs: int = 8, iters: int = 25, device: str = "cpu", dim: int = 2,
             overwrite: bool = False):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_ssl.data.synthetic import write_synthetic_dataset
    from nnunet_ssl.data.pool import preprocess_unlabeled

    out = os.path.abspath(out)
    claim_output_folder(out, overwrite)
    env = demo_environment(out)
    log = os.path.join(out, "demo_log.txt")
    configuration = "2d" if dim == 2 else "3d_fullres"
    t0 = time.time()
    folder = write_synthetic_dataset(env["nnUNet_raw"], DEMO_DATASET_ID, f"SSLDemo{dim}D", dim=dim)
    print(f"Synthetic dataset: {folder}")
    _run(["nnUNetv2_plan_and_preprocess", "-d", str(DEMO_DATASET_ID), "-c", configuration, "-np", "2",
          "--verify_dataset_integrity"], log,
         # nnU-Net 2.8's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0
         nnUNet_n_proc_DA=str(max(1, int(os.environ["nnUNet_n_proc_DA"]))))
    preprocess_unlabeled(DEMO_DATASET_ID, [configuration], num_processes=2)

    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    rows = []
    for trainer in TRAINERS:
        start = time.time()
        _run([sys.executable, "-m", "nnunet_ssl", "train", str(DEMO_DATASET_ID), configuration, "all",
              "-tr", trainer, "--epochs", str(epochs), "--iters", str(iters), "-device", device], log)
        train_seconds = time.time() - start
        pred = os.path.join(out, "predictions", trainer)
        _run(["nnUNetv2_predict", "-i", os.path.join(folder, "imagesTs"), "-o", pred, "-d", str(DEMO_DATASET_ID),
              "-c", configuration, "-f", "all", "-tr", trainer, "-device", device, "-npp", "0", "-nps", "0",
              "--disable_progress_bar"], log)
        reader = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)()
        compute_metrics_on_folder(os.path.join(folder, "labelsTs"), pred, os.path.join(pred, "summary.json"),
                                  reader, dataset_json["file_ending"], [1, 2], None, 1, chill=False)
        rows.append((trainer, dice_summary(os.path.join(pred, "summary.json")), train_seconds))

    budget = f"{epochs} epochs x {iters} iterations, fold all, {device}"
    lines = [f"Test-set Dice on {rows[0][1]['n']} held-out synthetic cases ({budget})", "",
             "| trainer | mean Dice | median Dice | lesion | core | cases < 0.8 | train time (s) |",
             "|---|---|---|---|---|---|---|"]
    for trainer, d, seconds in rows:
        lines.append(f"| {trainer} | {d['mean']:.4f} | {d['median']:.4f} | {d['per_label']['1']:.4f} | "
                     f"{d['per_label']['2']:.4f} | {d['failed']} | {seconds:.0f} |")
    table = "\n".join(lines)
    with open(os.path.join(out, "demo_results.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table + "\n")
    print(f"Everything is in {out}:\n  raw data      {env['nnUNet_raw']}\n  preprocessed  {env['nnUNet_preprocessed']}"
          f"\n  models        {env['nnUNet_results']}\n  predictions   {os.path.join(out, 'predictions')}"
          f"\n  table         {os.path.join(out, 'demo_results.md')}\n  command log   {log}"
          f"\nTotal time {time.time() - t0:.0f} s")
