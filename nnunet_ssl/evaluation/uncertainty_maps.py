"""`nnunet_ssl predict-uncertainty`: nnU-Net's prediction of a folder of images plus, per case, a voxel-wise
uncertainty map in the image's own geometry and file format, and `uncertainty.csv`, one row per case, most
uncertain first, to choose the cases to review.

Uncertainty = the entropy H(p_mean) in nats of the mean of several predictions of the class probabilities:

  mc_dropout   the network has dropout layers (architectures/dropout.py, an ASPP head, ...): --passes M
               stochastic passes per sliding-window tile, batched into one forward, dropout on in the dropout
               layers only (every other module in eval mode; restored afterwards)
  mirroring    no dropout: nnU-Net's test-time mirroring (every flip the checkpoint allows, as nnUNetv2_predict)
  folds        several folds (-f): the mean over the folds (of each fold's mean over passes or flips)
  softmax      one fold, no dropout, no mirroring: the entropy of the network's own probabilities

Everything else is nnU-Net's nnUNetPredictor: its preprocessing, its sliding window (Gaussian-weighted tiles; a
tile's prediction is made here, `_internal_maybe_mirror_and_predict`), its fold loop, its resampling back to the
image's geometry and the plans' image writer. The segmentation is nnUNetv2_predict's (nnU-Net's mean logits over
its flips and folds, the network in eval mode: with dropout the passes are extra forwards); the map is the
entropy of the mean probabilities of the stochastic predictions, resampled to the image like nnU-Net's.

Maps are written with the plans' reader-writer (same format and geometry as the input: .nii.gz, .png, .tif, ...)
as integers: value = round(65535 * H / ln C), i.e. the normalised entropy H / ln C in [0, 1] (0: certain, 1: all C
classes equally likely) scaled to 16 bits (a PNG cannot hold floats); nats = value * ln C / 65535 (the CSV's
`map_nats_per_unit`). A voxel is "uncertain" when H >= threshold * ln C (--threshold, default 0.5: halfway
between certain and uniform; with 2 classes a top probability below about 0.89).
"""
import argparse
import csv
import io
import math
import os
import re
import shutil
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunet_ssl.utilities.inputs import UserError

MAP_UNITS = 65535  # the map's integer value for H = ln C
DEFAULT_PASSES = 8
DEFAULT_THRESHOLD = 0.5  # of ln C
CSV_NAME, OVERVIEW_NAME = "uncertainty.csv", "uncertainty_overview.png"
CSV_COLUMNS = ("rank", "case", "mean_uncertainty_foreground", "mean_uncertainty_image",
               "uncertain_fraction_foreground", "uncertain_fraction_image", "uncertain_voxels", "foreground_voxels",
               "foreground_volume", "volume_unit", "mean_mutual_information_foreground", "source", "predictions",
               "threshold_nats", "map_nats_per_unit")


# ---------------------------------------------------------------------- the numbers
def probabilities_and_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) logits -> (B, C + 1, ...): the softmax probabilities and, as the last channel, their entropy
    (nats). Means of this over predictions are the mean probabilities and the expected entropy."""
    from nnunet_ssl.components.uncertainty import entropy

    p = torch.softmax(logits.float(), 1)
    return torch.cat([p, entropy(p)[:, None]], 1)


def mean_prediction(predictions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, C, ...) probabilities of P predictions -> the mean probabilities (C, ...), H(mean) and the mutual
    information H(mean) - mean H (both (...), nats)."""
    from nnunet_ssl.components.uncertainty import entropy

    mean = predictions.float().mean(0)
    total = entropy(mean[None])[0]
    return mean, total, (total - entropy(predictions.float()).mean(0)).clamp_min(0)


def stochastic_source(has_dropout: bool, mirroring: bool, n_folds: int) -> str:
    parts = ["mc_dropout" if has_dropout else "mirroring"] if has_dropout or mirroring else []
    parts += ["folds"] if n_folds > 1 else []
    return "+".join(parts) or "softmax"


def case_statistics(segmentation: np.ndarray, uncertainty: np.ndarray, mutual_information: Optional[np.ndarray],
                    spacing: Sequence[float], threshold_nats: float) -> Dict:
    """One CSV row (without rank, case, source) from a case's label map and uncertainty map (nats), both (Z, Y, X)
    in the image's geometry, and its spacing (mm, same axes). Foreground = any label > 0; 2D images (one slice)
    have their area in mm^2, 3D images their volume in mm^3. Means over an empty foreground are None."""
    foreground = segmentation > 0
    uncertain = uncertainty >= threshold_nats
    n_foreground = int(foreground.sum())
    two_d = segmentation.shape[0] == 1
    voxel = float(np.prod(spacing[1:] if two_d else spacing))

    def fg_mean(values):
        return float(values[foreground].mean()) if n_foreground else None

    return {"mean_uncertainty_foreground": fg_mean(uncertainty), "mean_uncertainty_image": float(uncertainty.mean()),
            "uncertain_fraction_foreground": fg_mean(uncertain.astype(np.float64)),
            "uncertain_fraction_image": float(uncertain.mean()), "uncertain_voxels": int(uncertain.sum()),
            "foreground_voxels": n_foreground, "foreground_volume": n_foreground * voxel,
            "volume_unit": "mm^2" if two_d else "mm^3",
            "mean_mutual_information_foreground": fg_mean(mutual_information) if mutual_information is not None
            else None}


def ranked(rows: List[Dict]) -> List[Dict]:
    """Most uncertain first: by mean uncertainty inside the predicted foreground; cases without predicted
    foreground last, by their mean uncertainty over the image. Adds `rank` (1 = review first)."""
    def key(row):
        fg = row["mean_uncertainty_foreground"]
        return (fg is None, -(fg if fg is not None else row["mean_uncertainty_image"]), row["case"])

    return [{**row, "rank": i + 1} for i, row in enumerate(sorted(rows, key=key))]


def csv_text(rows: List[Dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                         for k in CSV_COLUMNS})
    return out.getvalue()


def encode_map(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Nats -> the map file's integers (0 .. MAP_UNITS for 0 .. ln C)."""
    return np.rint(np.clip(values / math.log(num_classes), 0, 1) * MAP_UNITS).astype(np.uint16)


# ---------------------------------------------------------------------- the predictor
class _WithExtraChannels:
    """nnU-Net's label manager with C + 1 more output channels: the sliding window's buffer then holds the mean
    probabilities and the expected entropy beside nnU-Net's logits."""

    def __init__(self, label_manager):
        self._label_manager = label_manager
        self.num_segmentation_heads = 2 * label_manager.num_segmentation_heads + 1

    def __getattr__(self, name):
        return getattr(self._label_manager, name)


def _predictor_class():
    import itertools

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_ssl.architectures.dropout import dropout_layers
    from nnunet_ssl.core.teachers import mc_dropout_probabilities

    class UncertaintyPredictor(nnUNetPredictor):
        """nnUNetPredictor whose tiles, folds and output have 2C + 1 channels: nnU-Net's own logits (mean over its
        flips; the segmentation is nnUNetv2_predict's), then the mean probabilities and the expected entropy of the
        stochastic predictions: M batched MC-dropout passes where the network has dropout, else the flips."""

        passes = DEFAULT_PASSES
        pass_variance = 0.0  # the largest variance between MC-dropout passes so far (0: dropout changes nothing)

        @property
        def has_dropout(self) -> bool:
            return bool(dropout_layers(self.network))

        @property
        def mirror_axes(self):
            return self.allowed_mirroring_axes if self.use_mirroring else None

        def predictions_per_voxel(self) -> int:
            per_fold = self.passes if self.has_dropout else 2 ** len(self.mirror_axes or ())
            return per_fold * len(self.list_of_parameters)

        @torch.inference_mode()
        def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
            if self.has_dropout:  # nnU-Net's deterministic prediction (eval mode), then the passes
                logits = super()._internal_maybe_mirror_and_predict(x)
                stochastic, variance = mc_dropout_probabilities(self.network, x, self.passes,
                                                                probabilities_and_entropy)
                self.pass_variance = max(self.pass_variance, float(variance.max()))
                return torch.cat([logits, stochastic.to(logits.dtype)], 1)
            # nnU-Net's flips (predict_from_raw_data), summed in its order; each also as probabilities
            logits = self.network(x)
            stochastic = probabilities_and_entropy(logits)
            axes = [m + 2 for m in self.mirror_axes or ()]
            combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
            for flip in combinations:
                flipped = torch.flip(self.network(torch.flip(x, flip)), flip)
                logits += flipped
                stochastic += probabilities_and_entropy(flipped)
            if combinations:
                logits /= len(combinations) + 1
                stochastic /= len(combinations) + 1
            return torch.cat([logits, stochastic.to(logits.dtype)], 1)

        def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
            label_manager = self.label_manager
            self.label_manager = _WithExtraChannels(label_manager)
            try:
                return super().predict_logits_from_preprocessed_data(data)
            finally:
                self.label_manager = label_manager

    return UncertaintyPredictor


def make_predictor(model_folder: str, folds: Sequence[str], checkpoint: str, device: torch.device,
                   passes: int = DEFAULT_PASSES, use_mirroring: bool = True, allow_tqdm: bool = True):
    """The predictor, initialised from the model folder like nnUNetv2_predict (the trainer class's
    build_network_architecture, the checkpoint's network_weights)."""
    import contextlib

    from nnunet_ssl.utilities.paths import ensure_ext_trainer_env

    ensure_ext_trainer_env()
    with contextlib.redirect_stdout(io.StringIO()):  # "perform_everything_on_device ... only supported for cuda"
        predictor = _predictor_class()(use_mirroring=use_mirroring, device=device, allow_tqdm=allow_tqdm)
    predictor.passes = passes
    predictor.initialize_from_trained_model_folder(model_folder, list(folds), checkpoint)
    if predictor.label_manager.has_regions:
        raise UserError(f"{model_folder}: a region-based model (sigmoid outputs); the entropy maps here need "
                        f"softmax classes")
    if predictor.has_dropout and passes < 2:
        raise UserError(f"--passes {passes}: MC dropout needs at least 2 passes")
    return predictor


def to_image_geometry(channels: np.ndarray, properties: dict, plans_manager, configuration_manager,
                      fill: Sequence[float]) -> np.ndarray:
    """(K, preprocessed shape) -> (K, the image's shape as its reader returned it): nnU-Net's export steps
    (export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape) applied to any channels:
    resample with the plans' probability resampling, put into the crop's bounding box (`fill` per channel
    outside), transpose back."""
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

    spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current = configuration_manager.spacing if len(configuration_manager.spacing) == len(shape) \
        else [spacing[0], *configuration_manager.spacing]
    resampled = np.asarray(configuration_manager.resampling_fn_probabilities(channels, shape, current, spacing),
                           dtype=np.float32)
    out = np.empty((channels.shape[0], *properties["shape_before_cropping"]), np.float32)
    out[:] = np.asarray(fill, np.float32).reshape(-1, *[1] * (out.ndim - 1))
    out[(slice(None), *bounding_box_to_slice(properties["bbox_used_for_cropping"]))] = resampled
    return out.transpose([0] + [i + 1 for i in plans_manager.transpose_backward])


def case_maps(prediction: torch.Tensor, properties: dict, predictor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The predictor's (2C + 1, ...) output -> segmentation (nnU-Net's export of the logits channels: that of
    nnUNetv2_predict), H(mean) and mutual information, in the image's geometry (H is taken after resampling the
    mean probabilities)."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from nnunet_ssl.components.uncertainty import entropy

    c = predictor.label_manager.num_segmentation_heads
    segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
        prediction[:c], predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties)
    mean = prediction[c:2 * c].float().clamp_min(0)
    mean /= mean.sum(0, keepdim=True).clamp_min(1e-8)
    # the mutual information where the predictions were made (resampling mixes neighbours: their H(mean) would
    # exceed their mean H at every boundary), then resampled like the probabilities
    mutual_information = (entropy(mean[None])[0] - prediction[2 * c].float()).clamp_min(0)
    fill = [1.0] + [0.0] * c  # outside the crop nnU-Net predicts background (and no disagreement)
    maps = to_image_geometry(torch.cat([mean, mutual_information[None]]).cpu().numpy(), properties,
                             predictor.plans_manager, predictor.configuration_manager, fill)
    probabilities = np.clip(maps[:c], 0, None)
    probabilities /= np.maximum(probabilities.sum(0, keepdims=True), 1e-8)
    total = entropy(torch.from_numpy(probabilities)[None])[0].numpy()
    return np.asarray(segmentation), total, np.clip(maps[c], 0, None)


# ---------------------------------------------------------------------- inputs and outputs
def input_cases(folder: str, file_ending: str) -> Dict[str, List[str]]:
    """{case: its channel files CASE_0000<ending>, CASE_0001<ending>, ...} of an input folder, checked: every file
    with the ending is named CASE_XXXX, every case has channels 0 .. k-1 and all cases the same k."""
    if not os.path.isdir(folder):
        raise UserError(f"input folder {folder} does not exist")
    files = sorted(f for f in os.listdir(folder) if f.endswith(file_ending) and not f.startswith("."))
    if not files:
        raise UserError(f"{folder}: no images ending in {file_ending} (the model's dataset.json file_ending); "
                        f"nnU-Net's names are CASE_0000{file_ending}, CASE_0001{file_ending}, ...")
    cases: Dict[str, Dict[int, str]] = {}
    for f in files:
        match = re.fullmatch(r"(.+)_(\d{4})" + re.escape(file_ending), f)
        if not match:
            raise UserError(f"{os.path.join(folder, f)}: not named CASE_XXXX{file_ending} (XXXX = the 4-digit channel "
                            f"index, e.g. {f[:-len(file_ending)]}_0000{file_ending})")
        cases.setdefault(match.group(1), {})[int(match.group(2))] = os.path.join(folder, f)
    counts = {case: len(channels) for case, channels in cases.items()}
    expected = max(set(counts.values()), key=list(counts.values()).count)
    for case, channels in sorted(cases.items()):
        if sorted(channels) != list(range(expected)):
            raise UserError(f"{folder}: case {case} has channels {', '.join(f'_{i:04d}' for i in sorted(channels))}; "
                            f"the other cases have _0000 .. _{expected - 1:04d}")
    return {case: [channels[i] for i in range(expected)] for case, channels in sorted(cases.items())}


def model_folder_for(dataset, trainer: str, plans: str, configuration: str) -> str:
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_ssl.utilities.inputs import dataset_name, nnunet_folder, trainer_class

    nnunet_folder("nnUNet_results")
    name = dataset_name(dataset, needs=())  # a missing model folder is named by checked_folds
    trainer_class(trainer)  # a misspelled name: the closest ones
    return get_output_folder(name, trainer, plans, configuration)


def checked_folds(model_folder: str, folds: Optional[Sequence[str]], checkpoint: str) -> List[str]:
    """The folds to average (default: every fold_<n> holding the checkpoint, else fold_all), each checked."""
    for f in ("dataset.json", "plans.json"):
        if not os.path.isfile(os.path.join(model_folder, f)):
            what = "does not exist" if not os.path.isdir(model_folder) else f"has no {f}"
            raise UserError(f"model folder {model_folder} {what} (a trained nnU-Net model: -m, or -d/-tr/-p/-c)")
    if not folds:
        present = [d[5:] for d in sorted(os.listdir(model_folder)) if d.startswith("fold_")
                   and os.path.isfile(os.path.join(model_folder, d, checkpoint))]
        folds = [f for f in present if f != "all"] or present
        if not folds:
            raise UserError(f"{model_folder}: no fold_*/{checkpoint} (-chk names the checkpoint file)")
    for f in folds:
        path = os.path.join(model_folder, f"fold_{f}", checkpoint)
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist: fold {f} is not trained (or not finished: -chk "
                            f"checkpoint_latest.pth or checkpoint_best.pth)")
    return list(folds)


def output_names(cases: Sequence[str], file_ending: str, mutual_information: bool) -> List[str]:
    names = [CSV_NAME, OVERVIEW_NAME, "dataset.json", "plans.json"]
    for case in cases:
        names += [case + file_ending, f"{case}_uncertainty{file_ending}"]
        names += [f"{case}_mutual_information{file_ending}"] if mutual_information else []
    return names


def move_into_place(temp: str, output_folder: str) -> None:
    """A new output folder: the temporary one renamed (all at once). An existing one (other files of the user's stay):
    file by file, each a rename, the CSV last, so a CSV present means every map of the run is there."""
    from nnunet_ssl.utilities.atomic import replace_folder

    if not os.path.exists(output_folder):
        replace_folder(temp, output_folder)
        return
    for name in sorted(os.listdir(temp), key=lambda n: n == CSV_NAME):
        os.replace(os.path.join(temp, name), os.path.join(output_folder, name))


# ---------------------------------------------------------------------- the overview picture
def overview_panel(row: Dict, image_files: List[str], folder: str, reader, ending: str, num_classes: int) -> Dict:
    """What write_overview shows of a case, read back from the written files (the image, its segmentation and
    uncertainty map in `folder`)."""
    from nnunet_ssl.evaluation.overlay import as_picture, display_slice

    image, _ = reader.read_images(image_files)
    segmentation = reader.read_seg(os.path.join(folder, row["case"] + ending))[0][0]
    encoded = reader.read_seg(os.path.join(folder, f"{row['case']}_uncertainty{ending}"))[0][0]
    z = display_slice(segmentation)
    return {"row": row, "picture": as_picture(image, z), "segmentation": segmentation[z],
            "uncertainty": encoded[z].astype(np.float64) * math.log(num_classes) / MAP_UNITS, "z": z,
            "slices": segmentation.shape[0]}


def write_overview(panels: List[Dict], out_file: str, max_label: int, num_classes: int) -> None:
    """image | prediction | uncertainty map, one row per case (the panels' order): 2D whole, 3D the slice with
    the largest predicted area (the middle one if empty); panels from overview_panel."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    from nnunet_ssl.evaluation.overlay import save_figure, show_image, show_labels

    fig, axes = plt.subplots(len(panels), 3, figsize=(7.6, 2.5 * len(panels)), squeeze=False)
    for row, panel in enumerate(panels):
        r = panel["row"]
        fg = r["mean_uncertainty_foreground"]
        where = f" (slice {panel['z']})" if panel["slices"] > 1 else ""
        titles = (f"#{r['rank']} {r['case']}{where}", f"prediction: {r['foreground_voxels']} fg voxels",
                  f"entropy (nats), fg mean {'-' if fg is None else f'{fg:.3f}'}")
        for col, title in enumerate(titles):
            ax = axes[row, col]
            if col < 2:
                show_image(ax, panel["picture"])
            if col == 1:
                show_labels(ax, panel["segmentation"], max_label)
            if col == 2:
                shown = ax.imshow(panel["uncertainty"], cmap="magma", vmin=0, vmax=math.log(num_classes),
                                  interpolation="nearest")
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out_file)


# ---------------------------------------------------------------------- the command
def predict_uncertainty(model_folder: str, input_folder: str, output_folder: str, folds: Optional[Sequence[str]] = None,
                        checkpoint: str = "checkpoint_final.pth", device: str = "cuda", passes: int = DEFAULT_PASSES,
                        threshold: float = DEFAULT_THRESHOLD, overwrite: bool = False, use_mirroring: bool = True,
                        mutual_information_maps: bool = False, overview_cases: int = 6) -> List[Dict]:
    """Write segmentations, uncertainty maps, uncertainty.csv and uncertainty_overview.png; returns the CSV rows,
    most uncertain first."""
    import json

    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from tqdm import tqdm

    from nnunet_ssl.utilities.atomic import new_temp_folder

    if not 0.0 < threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: a share of ln C (the largest entropy), in (0, 1]")
    folds = checked_folds(model_folder, folds, checkpoint)
    dataset_json = load_json(os.path.join(model_folder, "dataset.json"))
    ending = dataset_json["file_ending"]
    cases = input_cases(input_folder, ending)
    output_folder = os.path.abspath(output_folder)
    if os.path.exists(output_folder) and not overwrite:
        existing = [n for n in output_names(cases, ending, mutual_information_maps)
                    if os.path.exists(os.path.join(output_folder, n))]
        if existing:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise UserError(f"{output_folder} already holds {', '.join(existing[:3])}{more}: use another -o, or "
                            f"--overwrite to replace them")

    predictor = make_predictor(model_folder, folds, checkpoint, torch.device(device), passes, use_mirroring)
    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    num_classes = predictor.label_manager.num_segmentation_heads
    n_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    source = stochastic_source(predictor.has_dropout, predictor.mirror_axes is not None, len(folds))
    n_predictions = predictor.predictions_per_voxel()
    threshold_nats = threshold * math.log(num_classes)
    if mutual_information_maps and n_predictions == 1:
        print("note: one prediction per voxel: no mutual information, its maps are not written", file=sys.stderr)
        mutual_information_maps = False
    print(f"uncertainty: entropy of the mean of {n_predictions} predictions per voxel ({source}: "
          f"{predictor.passes if predictor.has_dropout else 'no'} MC-dropout passes, mirror axes "
          f"{predictor.mirror_axes}, folds {', '.join(folds)}); uncertain voxel: H >= {threshold_nats:.4f} nats")
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    writer = plans_manager.image_reader_writer_class()
    rows = []
    temp = new_temp_folder(os.path.dirname(output_folder), os.path.basename(output_folder))
    try:
        for case, files in tqdm(list(cases.items()), desc="uncertainty maps", unit="case"):
            data, _, properties = preprocessor.run_case(files, None, plans_manager, configuration_manager, dataset_json)
            if data.shape[0] != n_channels:
                raise UserError(f"{', '.join(files)}: {data.shape[0]} channels; the model takes {n_channels} "
                                f"({dataset_json['channel_names']})")
            prediction = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
            segmentation, uncertainty, mutual_information = case_maps(prediction, properties, predictor)
            writer.write_seg(segmentation, os.path.join(temp, case + ending), properties)
            writer.write_seg(encode_map(uncertainty, num_classes),
                             os.path.join(temp, f"{case}_uncertainty{ending}"), properties)
            if mutual_information_maps:
                writer.write_seg(encode_map(mutual_information, num_classes),
                                 os.path.join(temp, f"{case}_mutual_information{ending}"), properties)
            row = {"case": case, **case_statistics(segmentation, uncertainty, mutual_information if n_predictions > 1
                                                   else None, properties["spacing"], threshold_nats),
                   "source": source, "predictions": n_predictions, "threshold_nats": threshold_nats,
                   "map_nats_per_unit": math.log(num_classes) / MAP_UNITS}
            rows.append(row)
        if predictor.has_dropout and predictor.pass_variance == 0:
            print(f"warning: {model_folder}: the MC-dropout passes were all equal: the network's dropout layers do "
                  f"not reach the output it predicts with (e.g. dropout in a head the inference choice does not use; "
                  f"nnunet_ssl set-inference-weights lists the choices); the maps are the softmax entropy",
                  file=sys.stderr)
        rows = ranked(rows)
        if overview_cases > 0:
            panels = [overview_panel(row, cases[row["case"]], temp, writer, ending, num_classes)
                      for row in rows[:overview_cases]]
            write_overview(panels, os.path.join(temp, OVERVIEW_NAME), max(predictor.label_manager.foreground_labels),
                           num_classes)
        for name, content in (("dataset.json", dataset_json), ("plans.json", plans_manager.plans)):
            with open(os.path.join(temp, name), "w") as f:
                json.dump(content, f, indent=1)
        with open(os.path.join(temp, CSV_NAME), "w", encoding="utf-8") as f:
            f.write(csv_text(rows))
        move_into_place(temp, output_folder)
    finally:
        if os.path.isdir(temp):
            shutil.rmtree(temp)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_ssl predict-uncertainty", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", required=True, help="input folder: CASE_0000<ending>, ... as for nnUNetv2_predict")
    p.add_argument("-o", required=True, help="output folder (files of an earlier run are replaced only with "
                                             "--overwrite)")
    p.add_argument("-m", default=None, help="model folder (.../Trainer__Plans__config); instead of -d, -tr, -p, -c")
    p.add_argument("-d", default=None, help="dataset name or id")
    p.add_argument("-c", default=None, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer class of the model (default: nnUNetTrainer)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", nargs="+", default=None, help="folds to average (default: every fold_<n> holding the "
                                                       "checkpoint, else fold_all)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file (default: checkpoint_final.pth)")
    p.add_argument("-device", "--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cpu or mps (default: cuda if available)")
    p.add_argument("--passes", type=int, default=DEFAULT_PASSES,
                   help=f"MC-dropout passes per tile, one batched forward (networks with dropout; default "
                        f"{DEFAULT_PASSES})")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="uncertain voxel: entropy >= THRESHOLD * ln C (C = classes with background; default 0.5)")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (as nnUNetv2_predict)")
    p.add_argument("--mutual-information", action="store_true",
                   help="also write <case>_mutual_information<ending>: H(mean) - mean H, the part due to "
                        "disagreement between the predictions (same scale as the uncertainty map)")
    p.add_argument("--overview-cases", type=int, default=6, help="rows of uncertainty_overview.png, most "
                                                                 "uncertain first (0: none; default 6)")
    p.add_argument("--overwrite", action="store_true", help="replace this command's files in an existing -o")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    if a.m is None:
        if a.d is None or a.c is None:
            parser().error("give the model folder (-m) or the dataset and configuration (-d, -c; with -tr, -p)")
        a.m = model_folder_for(a.d, a.tr, a.p, a.c)
    rows = predict_uncertainty(a.m, a.i, a.o, a.f, a.chk, a.device, a.passes, a.threshold, a.overwrite,
                               not a.disable_tta, a.mutual_information, a.overview_cases)
    print(f"{os.path.join(a.o, CSV_NAME)}: {len(rows)} cases, most uncertain first: "
          f"{', '.join(r['case'] for r in rows[:5])}{' ...' if len(rows) > 5 else ''}")
