"""Segmentation metrics for a folder of predictions: Dice, Jaccard, HD95, ASSD (mm and voxels), NSD.

Overlap counts come from nnU-Net's evaluation (compute_tp_fp_fn_tn); surface distances from MONAI
(compute_hausdorff_distance, compute_average_surface_distance, compute_surface_dice), which take the voxel
spacing into account and extract surfaces the same way for all three. Definitions:

- HD95: MONAI's symmetric percentile Hausdorff distance, max(P95(d(pred -> ref)), P95(d(ref -> pred))).
- ASSD: average symmetric surface distance, the mean of all surface distances of both directions.
- NSD: normalised surface Dice at a tolerance in mm (FLARE's NSD): the share of both surfaces lying within the
  tolerance of the other surface.
- mm: distances with the image spacing; vox: the same with unit spacing (what the SSL literature reports).

Empty masks (defined, never NaN, so means stay means):
- reference and prediction both empty: Dice = Jaccard = NSD = 1, HD95 = ASSD = 0 (nothing to find, nothing found);
- exactly one of them empty: Dice = Jaccard = NSD = 0, HD95 = ASSD = the image diagonal (the largest distance
  possible inside the image, in mm or voxels) - the worst value, as challenge evaluations do.
"""
import json
import os
import warnings
from multiprocessing import get_context
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from nnunet_ssl.utilities.atomic import write_json

METRICS = ("Dice", "Jaccard", "HD95_mm", "ASSD_mm", "NSD", "HD95_vox", "ASSD_vox")
HIGHER_IS_BETTER = {"Dice": True, "Jaccard": True, "NSD": True, "HD95_mm": False, "ASSD_mm": False,
                    "HD95_vox": False, "ASSD_vox": False}
FAILED_DICE = 0.8  # a case whose mean foreground Dice is below this counts as failed in summaries
UNDER, OVER = 0.8, 1.25  # predicted / true volume below UNDER: under-segmented; above OVER: over-segmented


def _squeeze_singleton_axes(mask: np.ndarray, spacing: Sequence[float]) -> Tuple[np.ndarray, List[float]]:
    """Drop axes of size 1 (nnU-Net reads 2D images as 1 x H x W with a dummy spacing of 999)."""
    keep = [i for i, n in enumerate(mask.shape) if n > 1]
    return mask.reshape([mask.shape[i] for i in keep]), [float(spacing[i]) for i in keep]


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                   nsd_tolerance_mm: float = 1.0) -> Dict[str, float]:
    """All metrics for one binary mask pair (same shape; spacing per axis, in mm)."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    pred, spacing_kept = _squeeze_singleton_axes(pred.astype(bool), spacing)
    ref, _ = _squeeze_singleton_axes(ref.astype(bool), spacing)
    tp = np.count_nonzero(pred & ref)
    fp, fn = np.count_nonzero(pred & ~ref), np.count_nonzero(~pred & ref)
    n_pred, n_ref = tp + fp, tp + fn
    if n_pred == 0 and n_ref == 0:
        return {"Dice": 1.0, "Jaccard": 1.0, "HD95_mm": 0.0, "ASSD_mm": 0.0, "NSD": 1.0, "HD95_vox": 0.0,
                "ASSD_vox": 0.0, "n_ref": 0, "n_pred": 0}
    result = {"Dice": 2 * tp / (2 * tp + fp + fn), "Jaccard": tp / (tp + fp + fn), "n_ref": int(n_ref),
              "n_pred": int(n_pred)}
    if n_pred == 0 or n_ref == 0:
        extent = np.array(pred.shape, dtype=float)
        return {**result, "NSD": 0.0,
                "HD95_mm": float(np.linalg.norm(extent * spacing_kept)), "ASSD_mm": float(np.linalg.norm(extent * spacing_kept)),
                "HD95_vox": float(np.linalg.norm(extent)), "ASSD_vox": float(np.linalg.norm(extent))}
    p = torch.from_numpy(pred)[None, None].float()
    r = torch.from_numpy(ref)[None, None].float()
    # MONAI 1.5/1.6 warns about a deprecated argument that its own metric functions pass internally
    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
    for unit, spacing_used in (("mm", spacing_kept), ("vox", None)):
        result[f"HD95_{unit}"] = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                                  spacing=spacing_used))
        result[f"ASSD_{unit}"] = float(compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                                        spacing=spacing_used))
    result["NSD"] = float(compute_surface_dice(p, r, [nsd_tolerance_mm], include_background=True,
                                               spacing=spacing_kept))
    return result


def _key(region_or_label) -> str:
    """"1" for a label, "(1, 2)" for a region (nnU-Net's own key would read "(np.int64(1),)")."""
    if isinstance(region_or_label, (tuple, list)):
        ids = [int(i) for i in region_or_label]
        return str(ids[0]) if len(ids) == 1 else "(" + ", ".join(map(str, ids)) + ")"
    return str(int(region_or_label))


def case_metrics(reference_file: str, prediction_file: str, reader_writer_class, regions_or_labels,
                 nsd_tolerance_mm: float = 1.0) -> dict:
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    rw = reader_writer_class()
    ref, properties = rw.read_seg(reference_file)
    pred, _ = rw.read_seg(prediction_file)
    if ref.shape != pred.shape:
        raise ValueError(f"{prediction_file}: shape {pred.shape[1:]} differs from reference {reference_file} "
                         f"{ref.shape[1:]}")
    spacing = properties["spacing"]
    metrics = {_key(r): binary_metrics(region_or_label_to_mask(pred[0], r), region_or_label_to_mask(ref[0], r),
                                       spacing, nsd_tolerance_mm)
               for r in regions_or_labels}
    return {"reference_file": reference_file, "prediction_file": prediction_file, "spacing": list(map(float, spacing)),
            "metrics": metrics}


def case_volume_ratio(case: dict) -> float:
    """Predicted / true volume of one evaluated case (case_metrics' entry): the mean over the labels present in the
    reference (below 1: under-segmented, as the pool audit's pseudo_labels.volume_ratio); NaN when none is (or
    the summary predates the voxel counts)."""
    ratios = [m["n_pred"] / m["n_ref"] for m in case.get("metrics", {}).values() if m.get("n_ref", 0) > 0]
    return float(np.mean(ratios)) if ratios else float("nan")


def summarize(per_case: List[dict]) -> dict:
    """Per label and over labels (each case's mean over labels first): mean, std, median, min, max, n."""
    def stats(values):
        v = np.asarray(values, dtype=float)
        return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}

    labels = list(per_case[0]["metrics"])
    per_label = {k: {m: stats([c["metrics"][k][m] for c in per_case]) for m in METRICS} for k in labels}
    case_means = {m: [float(np.mean([c["metrics"][k][m] for k in labels])) for c in per_case] for m in METRICS}
    return {"per_label": per_label, "foreground": {m: stats(v) for m, v in case_means.items()},
            "case_mean_dice": case_means["Dice"],
            "failed_cases": int(np.sum(np.asarray(case_means["Dice"]) < FAILED_DICE))}


def evaluate_folder(reference_folder: str, prediction_folder: str, dataset_json: Union[dict, str],
                    output_file: str = None, nsd_tolerance_mm: float = 1.0, num_processes: int = 2,
                    cases_from_predictions: bool = False) -> dict:
    """Evaluate predictions against the references of the same name. Every reference must be predicted, or,
    with `cases_from_predictions` (a cross-validation fold: the reference folder holds all labeled cases),
    every prediction must have a reference."""
    from nnunetv2.evaluation.evaluate_predictions import labels_to_list_of_regions
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from tqdm import tqdm

    if isinstance(dataset_json, str):
        with open(dataset_json) as f:
            dataset_json = json.load(f)
    ending = dataset_json["file_ending"]
    listed = prediction_folder if cases_from_predictions else reference_folder
    other = reference_folder if cases_from_predictions else prediction_folder
    references = sorted(f for f in os.listdir(listed) if f.endswith(ending))
    if not references:
        raise FileNotFoundError(f"{listed}: no files ending in {ending}")
    missing = [f for f in references if not os.path.isfile(os.path.join(other, f))]
    if missing:
        raise FileNotFoundError(f"{other}: {len(missing)} of the {len(references)} cases of {listed} are missing "
                                f"here, e.g. {missing[:3]}")
    lm = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    regions = lm.foreground_regions if lm.has_regions else labels_to_list_of_regions(lm.foreground_labels)
    rw_class = determine_reader_writer_from_dataset_json(dataset_json, os.path.join(listed, references[0]), verbose=False)
    jobs = [(os.path.join(reference_folder, f), os.path.join(prediction_folder, f), rw_class, regions,
             nsd_tolerance_mm) for f in references]
    desc = "evaluating " + os.path.join(*os.path.normpath(os.path.abspath(prediction_folder)).split(os.sep)[-2:])
    if num_processes > 1:
        with get_context("spawn").Pool(num_processes) as pool:
            per_case = list(tqdm(pool.imap(_case_job, jobs), total=len(jobs), desc=desc, unit="case"))
    else:
        per_case = [_case_job(j) for j in tqdm(jobs, desc=desc, unit="case")]
    summary = {"nsd_tolerance_mm": nsd_tolerance_mm, "n_cases": len(per_case), **summarize(per_case),
               "per_case": per_case}
    if output_file:
        write_json(output_file, summary)
    return summary


def _case_job(job):
    return case_metrics(*job)


def parser():
    import argparse
    p = argparse.ArgumentParser(prog="nnunet_ssl evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference_folder", help="ground-truth segmentations (e.g. labelsTs)")
    p.add_argument("prediction_folder", help="predictions of the same names (every reference must be predicted)")
    p.add_argument("-djfile", required=True, help="dataset.json (labels, file ending)")
    p.add_argument("-o", default=None, help="write the summary JSON (per case, per label, means) to this file; "
                                            "default: print only, nothing is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o file (default: refuse)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    p.add_argument("-np", type=int, default=2, help="processes (default: 2)")
    return p


def main(argv=None):
    p = parser()
    a = p.parse_args(argv)
    if a.o and os.path.exists(a.o) and not a.overwrite:
        p.error(f"{a.o} exists; pass --overwrite to replace it, or another -o")
    s = evaluate_folder(a.reference_folder, a.prediction_folder, a.djfile, a.o, a.nsd_tolerance, a.np)
    fg = s["foreground"]
    print(f"{s['n_cases']} cases, mean over foreground labels:")
    for m in METRICS:
        print(f"  {m:9s} mean {fg[m]['mean']:.4f} +- {fg[m]['std']:.4f}  median {fg[m]['median']:.4f}")
    print(f"  cases with Dice < {FAILED_DICE}: {s['failed_cases']}" + (f"\nwritten: {a.o}" if a.o else ""))
