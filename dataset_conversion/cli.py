"""`nnunet_ssl convert <dataset> SRC -d ID [options]`: public datasets, as downloaded -> nnU-Net v2 raw datasets
with an unlabeled pool (imagesTr/labelsTr = labeled, imagesUnlabeled = unlabeled, imagesTs/labelsTs = test).

Each dataset's expected source layout: `nnunet_ssl convert <dataset> -h`, or README.md ("Dataset converters").
"""
import argparse
import os
import shlex
import sys

from nnunet_ssl.dataset_conversion import brats, flare, isic, la, pancreas, ph2
from nnunet_ssl.dataset_conversion.convert import convert, convert_external_test
from nnunet_ssl.dataset_conversion.core import ConversionError, ConvertOptions
from nnunet_ssl.dataset_conversion.split import VALIDATION_TARGETS

# command name -> (module, one-line help, fixed argument values)
CONVERTERS = {
    "isic2016": (isic, "ISIC 2016 Part 1 (2D RGB)", {"year": 2016}),
    "isic2017": (isic, "ISIC 2017 Part 1 (2D RGB)", {"year": 2017}),
    "isic2018": (isic, "ISIC 2018 Task 1 (2D RGB)", {"year": 2018}),
    "ph2": (ph2, "PH2 (2D RGB); also as the test set of an ISIC dataset", {}),
    "la": (la, "Left atrium 2018 (3D MRI): HDF5 version or raw NRRD release", {}),
    "pancreas": (pancreas, "NIH Pancreas-CT (3D CT): DICOM + TCIA labels, or HDF5 version", {}),
    "brats": (brats, "BraTS 2019 (3D MRI): --task ssl (FLAIR, whole tumour) or full (regions)", {}),
    "flare": (flare, "FLARE 2022 (3D CT): 50 labeled, 2000 unlabeled, tuning set as test", {}),
}
# options that do not change the converted dataset (so a re-run with other values is the same conversion)
NOT_RECORDED = ("module", "num_processes", "overwrite", "output_root")
PATH_OPTIONS = ("src", "train_list", "val_list", "test_list", "labels_dir")


def default_num_processes() -> int:
    return int(os.environ.get("nnUNet_def_n_proc", min(8, os.cpu_count() or 1)))


def add_common_arguments(p: argparse.ArgumentParser, module) -> None:
    p.add_argument("src", metavar="SRC", help="the dataset folder as downloaded (layout: see above)")
    p.add_argument("-d", "--dataset-id", type=int, help="nnU-Net dataset id (1..999)")
    p.add_argument("-o", "--output-root", help="where DatasetXXX_Name/ goes (default: $nnUNet_raw)")
    p.add_argument("--name", help="dataset name after DatasetXXX_ (default: the converter's)")
    labeled = p.add_mutually_exclusive_group()
    labeled.add_argument("--labeled", type=int, metavar="N",
                         help="N labeled cases: the first N of the training list, else of the seeded shuffle; "
                              "the other training cases go to imagesUnlabeled (default: all labeled)")
    labeled.add_argument("--labeled-fraction", type=float, metavar="F",
                         help="labeled = round(F x training cases), e.g. 0.05 of LA's 80 = 4")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle used where no list is given (default 0)")
    p.add_argument("--train-list", help="file with the training case ids, one per line (order matters: the first N "
                                        "are labeled)")
    p.add_argument("--val-list", help="file with the validation case ids")
    p.add_argument("--test-list", help="file with the test case ids")
    p.add_argument("--validation-to", choices=VALIDATION_TARGETS, default="skip",
                   help="where validation cases go, for sources that have them (default: skip)")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="for sources without a test set: hold out this fraction of the seeded shuffle as test")
    p.add_argument("--skip-missing", action="store_true",
                   help="listed cases that are absent from the source are left out (and recorded) instead of an error")
    p.add_argument("--skip-bad", action="store_true",
                   help="bad cases (unreadable, missing mask, wrong values or size) are skipped and summarised "
                        "instead of stopping")
    p.add_argument("-np", "--num-processes", type=int, default=default_num_processes(),
                   help="worker processes (default: $nnUNet_def_n_proc, else up to 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset folder written otherwise (a re-run with the same arguments "
                        "replaces it anyway)")
    if getattr(module, "IS_2D", False):
        p.add_argument("--max-size", type=int, metavar="PX",
                       help="scale images down so that the longer side is at most PX (image: Lanczos; mask: "
                            "nearest neighbour); default: keep the size")
    if getattr(module, "HAS_EXTRA_UNLABELED", False):
        p.add_argument("--no-extra-unlabeled", action="store_true",
                       help="leave the image-only cases out of imagesUnlabeled")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet_ssl convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for command, (module, help_text, fixed) in CONVERTERS.items():
        p = sub.add_parser(command, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common_arguments(p, module)
        module.add_arguments(p)
        p.set_defaults(module=module, **fixed)
    return parser


def recorded_arguments(args: argparse.Namespace) -> dict:
    """The arguments that define the converted dataset, paths made absolute (stored in the split record, and
    compared on a re-run)."""
    recorded = {k: v for k, v in vars(args).items() if k not in NOT_RECORDED}
    for key in PATH_OPTIONS:
        if recorded.get(key):
            recorded[key] = os.path.abspath(recorded[key])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(recorded.items())}


def options_from_args(args: argparse.Namespace, argv) -> ConvertOptions:
    output_root = args.output_root or os.environ.get("nnUNet_raw")
    if not output_root:
        raise ConversionError("nnUNet_raw is not set: set it or pass -o OUTPUT_ROOT")
    lists = {role: os.path.abspath(path) for role, path in
             (("train", args.train_list), ("validation", args.val_list), ("test", args.test_list)) if path}
    return ConvertOptions(
        dataset_id=args.dataset_id, output_root=os.path.abspath(output_root), name=args.name, labeled=args.labeled,
        labeled_fraction=args.labeled_fraction, seed=args.seed, lists=lists, validation_to=args.validation_to,
        test_fraction=args.test_fraction, skip_missing=args.skip_missing, skip_bad=args.skip_bad,
        num_processes=max(1, args.num_processes), overwrite=args.overwrite, arguments=recorded_arguments(args),
        command="nnunet_ssl convert " + shlex.join(argv))


def main(argv=None) -> str:
    """Run one conversion; returns the dataset folder. Raises ConversionError (the `nnunet_ssl` command turns it
    into a message and exit code 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    as_test_set_of = getattr(args, "as_test_set_of", None)
    if args.dataset_id is None and not as_test_set_of:
        parser.error("-d DATASET_ID is required")
    opts = options_from_args(args, argv)
    plan = args.module.plan(args)
    if as_test_set_of:
        return convert_external_test(plan, opts, as_test_set_of, args.test_folder_suffix)
    return convert(plan, opts)


if __name__ == "__main__":
    try:
        main()
    except ConversionError as e:
        print(f"nnunet_ssl convert: error: {e}", file=sys.stderr)
        sys.exit(2)
