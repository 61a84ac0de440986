"""nnU-Net's postprocessing chosen by name, for datasets too small to choose it by cross-validation.

nnU-Net decides its postprocessing (nnUNetv2_find_best_configuration, nnUNetv2_determine_postprocessing) on the
cross-validation predictions of the labeled cases: it tries removing all but the largest connected foreground
component, then all but the largest component of each class, and keeps what raises the mean Dice; the result is a
postprocessing.pkl that nnUNetv2_apply_postprocessing applies. With 4 labeled cases and a model trained on fold
`all` there is nothing to decide by, but the data often decide beforehand (one lesion per dermoscopy image, one
liver per CT). `nnunet_ssl write-postprocessing` writes that postprocessing.pkl for one of the two candidates,
so stock nnU-Net applies it:

    nnunet_ssl write-postprocessing --kind largest-foreground -djfile DATASET_JSON -o postprocessing.pkl
    nnUNetv2_apply_postprocessing -i PREDICTIONS -o OUT -pp_pkl_file postprocessing.pkl

`nnunet_ssl benchmark --postprocess KIND` evaluates every trainer once more after it (postprocess_folder).
Both use nnU-Net's own remove_all_but_largest_component_from_segmentation.
"""
import argparse
import json
import os
import pickle
from typing import List

from nnunet_ssl.utilities.atomic import atomic_folder, write_bytes
from nnunet_ssl.utilities.inputs import UserError

# nnU-Net's two candidates, in the order nnUNetv2_determine_postprocessing tries them
POSTPROCESSING = {"largest-foreground": "all but the largest connected foreground component removed",
                  "largest-per-class": "all but the largest connected component of each class removed"}


def postprocessing_steps(kind: str, dataset_json: dict) -> tuple:
    """(pp_fns, pp_fn_kwargs) of the postprocessing `kind`, as nnU-Net's postprocessing.pkl holds them."""
    from nnunetv2.postprocessing.remove_connected_components import \
        remove_all_but_largest_component_from_segmentation as keep_largest
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    if kind not in POSTPROCESSING:
        raise UserError(f"postprocessing {kind!r}: one of {', '.join(POSTPROCESSING)}")
    labels = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    if kind == "largest-foreground":  # every foreground class as one mask, as nnU-Net's keep_largest_fg
        return [keep_largest], [{"labels_or_regions": labels.foreground_labels}]
    each = labels.foreground_regions if labels.has_regions else labels.foreground_labels
    return [keep_largest] * len(each), [{"labels_or_regions": c} for c in each]


def postprocess_folder(predictions: str, out: str, kind: str, dataset_json: dict) -> List[str]:
    """Every `<case><file_ending>` of `predictions`, postprocessed by `kind`, into `out` (written completely or
    not at all; replaced if it exists; `predictions` is left as it is). Returns the cases' file names."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.postprocessing.remove_connected_components import load_postprocess_save

    cases = sorted(f for f in os.listdir(predictions) if f.endswith(dataset_json["file_ending"]))
    if not cases:
        raise UserError(f"{predictions}: no predictions ({dataset_json['file_ending']} files) to postprocess")
    steps = postprocessing_steps(kind, dataset_json)
    io = determine_reader_writer_from_dataset_json(dataset_json, os.path.join(predictions, cases[0]), verbose=False)()
    with atomic_folder(out) as temp:
        for case in cases:
            load_postprocess_save(os.path.join(predictions, case), os.path.join(temp, case), io, *steps)
    return cases


def write_postprocessing_pkl(path: str, kind: str, dataset_json: dict) -> None:
    """nnU-Net's postprocessing.pkl of `kind` at `path` (a new file: an existing one is never replaced)."""
    if os.path.exists(path):
        raise UserError(f"{path} exists; it is left as it is: give another -o")
    write_bytes(path, pickle.dumps(postprocessing_steps(kind, dataset_json)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_ssl write-postprocessing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True, choices=list(POSTPROCESSING),
                   help="; ".join(f"{k}: {v}" for k, v in POSTPROCESSING.items()))
    p.add_argument("-djfile", required=True, help="the dataset's dataset.json (its labels)")
    p.add_argument("-o", default="postprocessing.pkl", help="the file to write (default: postprocessing.pkl; an "
                                                            "existing file is not replaced)")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        with open(a.djfile) as f:
            dataset_json = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"-djfile {a.djfile}: not a readable dataset.json ({e})") from e
    if "labels" not in dataset_json:
        raise UserError(f"-djfile {a.djfile}: no 'labels' in it (nnU-Net's dataset.json has them)")
    write_postprocessing_pkl(a.o, a.kind, dataset_json)
    print(f"{a.o}: {POSTPROCESSING[a.kind]}; apply it with nnUNetv2_apply_postprocessing -i PREDICTIONS -o OUT "
          f"-pp_pkl_file {a.o}")
