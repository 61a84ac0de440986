"""`nnunet_ssl overlay`: a contact sheet of test cases, to look at what the numbers mean.

One row per case, worst first by the reference (first) prediction folder's Dice: the image, the ground truth and
each prediction folder's segmentation over it, with the case's Dice and predicted / true foreground size (area in
2D, volume in 3D; below 1: under-segmented) in each title. `--order difference` shows instead where the last
folder differs most from the first: its largest losses in Dice first, then its largest gains (e.g. an SSL
trainer against nnUNetTrainer). 2D images are shown whole (RGB as RGB); 3D volumes by the slice with the largest
ground-truth area (the first channel, grey values clipped to the 1st-99th percentile). Files are read with the
dataset's nnU-Net reader.
"""
import argparse
import json
import os
import re
from typing import Dict, List, Sequence

import numpy as np


def case_dice(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> float:
    """Mean Dice over the foreground labels (a label absent from both counts as 1), for ordering the sheet;
    the reported metrics are nnunet_ssl evaluate's."""
    scores = []
    for label in labels:
        p, r = prediction == label, reference == label
        total = p.sum() + r.sum()
        scores.append(1.0 if total == 0 else 2.0 * np.logical_and(p, r).sum() / total)
    return float(np.mean(scores))


def paired_order(first: Dict[str, float], last: Dict[str, float], max_cases: int) -> List[str]:
    """Cases by last - first Dice: up to max_cases // 2 with the largest losses (most negative first), then the
    largest gains (largest first) up to max_cases rows; cases without a difference are not shown."""
    difference = sorted((last[c] - first[c], c) for c in first)
    losses = [c for d, c in difference if d < 0][: max_cases // 2]
    gains = [c for d, c in reversed(difference) if d > 0][: max_cases - len(losses)]
    return losses + gains


def display_slice(reference: np.ndarray) -> int:
    """(Z, Y, X) ground truth -> the slice with the largest ground-truth area; the middle one if it is empty."""
    area = (reference > 0).reshape(reference.shape[0], -1).sum(1)
    return int(np.argmax(area)) if area.max() > 0 else reference.shape[0] // 2


def as_picture(image: np.ndarray, z: int) -> np.ndarray:
    """(C, Z, Y, X) image -> what imshow shows: RGB for 3-channel 2D images, else channel 0 scaled to [0, 1]."""
    if image.shape[0] == 3 and image.shape[1] == 1:
        picture = np.moveaxis(image[:, 0], 0, -1).astype(np.float64)
    else:
        picture = image[0, z].astype(np.float64)
    low, high = np.percentile(picture, (1, 99))
    return np.clip((picture - low) / max(high - low, 1e-8), 0, 1)


def show_image(ax, picture: np.ndarray) -> None:
    """An as_picture() result on `ax`: RGB as RGB, one channel in grey."""
    ax.imshow(picture, cmap=None if picture.ndim == 3 else "gray", interpolation="nearest")


def show_labels(ax, mask: np.ndarray, max_label: int) -> None:
    """A 2D label map over what `ax` shows, background transparent: bright colours that stand out on skin and grey
    values, then tab20's for many-class datasets (index 0 unused)."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    palette = ["black", "cyan", "yellow", "magenta", "lime", "red", "dodgerblue", "white"] + \
        list(matplotlib.colormaps["tab20"].colors)
    colours = ListedColormap((palette * (max_label // len(palette) + 1))[: max_label + 1])
    ax.imshow(np.ma.masked_equal(mask, 0), cmap=colours, vmin=0, vmax=max_label + 1 - 1e-6, alpha=0.45,
              interpolation="nearest")


def save_figure(fig, out_file: str) -> None:
    """Write a matplotlib figure as PNG complete or not at all (temporary file, rename) and close it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    temp = f"{out_file}.pid{os.getpid()}.tmp.png"
    fig.savefig(temp, dpi=80)
    plt.close(fig)
    os.replace(temp, out_file)


def column_title(name: str, width: int = 30) -> str:
    """A trainer's name in lines of at most `width` characters where it can be broken (after an underscore or a
    space; a 2.4-inch column at 8 pt): long names would otherwise run into the next column's title."""
    import re

    lines = [""]
    for piece in re.findall(r"[^_ ]+[_ ]?|[_ ]", name):  # each piece ends with its underscore or space
        if lines[-1] and len(lines[-1] + piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


def write_contact_sheet(images_folder: str, reference_folder: str, prediction_folders: Sequence[str],
                        names: Sequence[str], dataset_json: dict, out_file: str, max_cases: int = 12,
                        order: str = "worst") -> List[str]:
    """The sheet of the cases every prediction folder has; returns the case ids shown, in the sheet's order.
    `order`: "worst" (by the first folder's Dice) or "difference" (paired_order of the first and last folder;
    no sheet is written, and [] returned, when every case has the same Dice in both)."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from tqdm import tqdm

    from nnunet_ssl.components.pseudo_labels import volume_ratio
    from nnunet_ssl.utilities.inputs import UserError

    ending = dataset_json["file_ending"]
    reader = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)()
    labels = [int(v) for v in LabelManager(dataset_json["labels"], None).foreground_labels]
    cases = sorted(f[: -len(ending)] for f in os.listdir(reference_folder) if f.endswith(ending))
    cases = [c for c in cases if all(os.path.isfile(os.path.join(p, c + ending)) for p in prediction_folders)]
    if not cases:
        raise UserError(f"no case of {reference_folder} is in every prediction folder ({', '.join(prediction_folders)})")
    image_files = sorted(os.listdir(images_folder))

    def channel_files(case):  # CASE_0000<ending>, ... (one file holds all three channels of an RGB PNG)
        return [os.path.join(images_folder, f) for f in image_files
                if f.endswith(ending) and re.fullmatch(re.escape(case) + r"_\d{4}", f[: -len(ending)])]

    def seg(folder, case):
        return reader.read_seg(os.path.join(folder, case + ending))[0][0]  # (Z, Y, X)

    if order not in ("worst", "difference"):
        raise ValueError(f"unknown order {order!r}")
    if order == "difference" and len(prediction_folders) < 2:
        raise UserError("--order difference compares two prediction folders (the first and the last); got one")
    ordered_by = names[0] if order == "worst" else f"{names[-1]} - {names[0]}"
    first, last = {}, {}
    for case in tqdm(cases, desc=f"ordering {os.path.basename(out_file)} by {ordered_by} Dice", unit="case"):
        reference = seg(reference_folder, case)
        first[case] = case_dice(seg(prediction_folders[0], case), reference, labels)
        if order == "difference":
            last[case] = case_dice(seg(prediction_folders[-1], case), reference, labels)
    if order == "worst":
        shown = sorted(first, key=lambda c: (first[c], c))[:max_cases]
    else:
        shown = paired_order(first, last, max_cases)
        if not shown:  # nothing to show: no sheet
            return []

    columns = ["image", "ground truth"] + [column_title(n) for n in names]
    fig, axes = plt.subplots(len(shown), len(columns), figsize=(2.4 * len(columns), 2.5 * len(shown)), squeeze=False)
    for row, case in enumerate(shown):
        image, _ = reader.read_images(channel_files(case))
        reference = seg(reference_folder, case)
        z = display_slice(reference)
        picture = as_picture(image, z)
        masks = [reference] + [seg(p, case) for p in prediction_folders]
        for col, title in enumerate(columns):
            ax = axes[row, col]
            show_image(ax, picture)
            if col > 0:
                show_labels(ax, masks[col - 1][z], max(labels))
                if col > 1:
                    title = (f"{title}\nDice {case_dice(masks[col - 1], reference, labels):.3f}, "
                             f"size x{volume_ratio(masks[col - 1], reference, labels):.2f}")
            else:
                title = f"{case}" + (f" (slice {z})" if image.shape[1] > 1 else "")
                if order == "difference":
                    title += f"\n{100 * (last[case] - first[case]):+.1f} Dice points"  # last - first
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out_file)
    return shown


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_ssl overlay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", required=True, help="images folder (imagesTs: CASE_0000<ending>, ...)")
    p.add_argument("-r", required=True, help="ground-truth folder (labelsTs)")
    p.add_argument("-p", nargs="+", required=True, help="prediction folders; the first orders the cases (worst first)")
    p.add_argument("--names", nargs="+", default=None, help="a column title per prediction folder (default: the "
                                                             "folder names)")
    p.add_argument("-djfile", required=True, help="the dataset's dataset.json (labels, file ending, reader)")
    p.add_argument("-o", default="overlays.png", help="output PNG (default: overlays.png)")
    p.add_argument("--max-cases", type=int, default=12, help="rows of the sheet (default: 12)")
    p.add_argument("--order", choices=("worst", "difference"), default="worst",
                   help="worst: the first folder's worst cases first (default); difference: the last folder's "
                        "largest losses against the first, then its largest gains")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    names = a.names or [os.path.basename(os.path.normpath(p)) for p in a.p]
    if len(names) != len(a.p):
        parser().error(f"--names gives {len(names)} names for {len(a.p)} prediction folders")
    if os.path.exists(a.o) and not a.overwrite:
        parser().error(f"{a.o} exists; pass --overwrite to replace it, or another -o")
    with open(a.djfile) as f:
        dataset_json: Dict = json.load(f)
    shown = write_contact_sheet(a.i, a.r, a.p, names, dataset_json, a.o, a.max_cases, a.order)
    how = f"worst first by {names[0]}" if a.order == "worst" else \
        f"{names[-1]}'s largest losses against {names[0]} first, then its largest gains"
    if not shown:
        print(f"{a.o} not written: every case has the same Dice in {a.p[0]} and {a.p[-1]}")
        return
    print(f"{a.o}: {len(shown)} cases, {how}: {', '.join(shown)}")
