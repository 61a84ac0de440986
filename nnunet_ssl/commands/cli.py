"""`nnunet_ssl` command line."""
import argparse
import json
import sys


def cmd_env(args):
    import os

    from nnunet_ssl.utilities.paths import trainers_folder

    print(f"export nnUNet_extTrainer={trainers_folder()}")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if not os.environ.get(var):
            print(f"# note: {var} is not set (nnU-Net needs it)", file=sys.stderr)


def cmd_preprocess_unlabeled(args):
    from nnunet_ssl.data.pool import preprocess_unlabeled

    preprocess_unlabeled(args.d, args.c, args.p, args.np, overwrite=args.overwrite)


def cmd_make_splits(args):
    import os

    from nnunet_ssl.data.splits import ensure_splits, labeled_case_ids
    from nnunet_ssl.utilities.inputs import dataset_name, nnunet_folder

    name = dataset_name(args.d, needs=("nnUNet_raw", "nnUNet_preprocessed"))
    raw = os.path.join(nnunet_folder("nnUNet_raw"), name)
    nnUNet_preprocessed = nnunet_folder("nnUNet_preprocessed")
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    print(ensure_splits(os.path.join(nnUNet_preprocessed, name), labeled_case_ids(raw, dataset_json)))


def cmd_set_inference_weights(args):
    from nnunet_ssl.core.checkpoints import describe_choices, model_checkpoints, set_inference_weights
    from nnunet_ssl.utilities.inputs import dataset_name

    args.d = dataset_name(args.d, needs=("nnUNet_results",))
    for f in model_checkpoints(args.d, args.c, args.tr, args.f, args.p, args.chk):
        if args.use is None:
            print(f"{f} (* = in network_weights):\n{describe_choices(f)}")
        else:
            previous = set_inference_weights(f, args.use)
            print(f"{f}: inference weights {previous} -> {args.use}")


def cmd_demo(args):
    from nnunet_ssl.commands.demo import run_demo

    run_demo(args.out, args.epochs, args.iters, args.device, args.dim, args.overwrite, trainers=args.tr,
             seed=args.seed, quick=args.quick)


# Subcommands with their own argument parsers: everything after the name is passed on unparsed.
PASS_THROUGH = {"train": "nnunet_ssl.commands.train", "bench-step": "nnunet_ssl.evaluation.bench_step",
                "convert": "nnunet_ssl.dataset_conversion.cli", "evaluate": "nnunet_ssl.evaluation.metrics",
                "leaderboard": "nnunet_ssl.evaluation.leaderboard", "benchmark": "nnunet_ssl.evaluation.benchmark",
                "overlay": "nnunet_ssl.evaluation.overlay",
                "predict-uncertainty": "nnunet_ssl.evaluation.uncertainty_maps",
                "self-train": "nnunet_ssl.commands.self_train",
                "write-postprocessing": "nnunet_ssl.evaluation.postprocessing"}


def _printable_on_any_locale():
    """Under an ASCII locale (LC_ALL=C, no PYTHONIOENCODING) a table's "±" would end a finished benchmark with
    UnicodeEncodeError at its last print; unencodable characters are escaped instead (files are UTF-8 anyway)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv=None):
    _printable_on_any_locale()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:
        import importlib
        command = importlib.import_module(PASS_THROUGH[argv[0]]).main
        return _with_clean_errors(lambda: command(argv[1:]))
    parser = argparse.ArgumentParser(prog="nnunet_ssl", description="Semi-supervised training for nnU-Net v2")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("env", help="print the nnUNet_extTrainer setting that lets nnU-Net find the trainers "
                                   "(use: eval \"$(nnunet_ssl env)\")")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("preprocess-unlabeled", help="preprocess imagesUnlabeled/ with the dataset's plans")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", nargs="+", default=None, help="configurations (default: those of 2d, 3d_fullres, "
                                                       "3d_lowres that the plans have)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-np", type=int, default=4, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if the pool is up to date")
    p.set_defaults(func=cmd_preprocess_unlabeled)

    p = sub.add_parser("make-splits", help="write splits_final.json: min(5, n_labeled) folds (leave-one-out "
                                           "below 5); an existing file is checked, not replaced")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.set_defaults(func=cmd_make_splits)

    p = sub.add_parser("set-inference-weights", help="list the inference choices of a model's checkpoints (teacher, "
                                                     "student, network a/b, ensemble, ...) or pick the one "
                                                     "nnUNetv2_predict uses")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", required=True, help="trainer class of the model")
    p.add_argument("-f", nargs="+", default=None, help="folds (default: every fold_* of the model folder)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name (default: checkpoint_final.pth)")
    p.add_argument("--use", default=None, help="the inference choice to put into network_weights; without it the "
                                               "choices are listed")
    p.set_defaults(func=cmd_set_inference_weights)

    for name, text in (("train", "nnUNetv2_train with an explicit length (epochs x iterations), any trainer"),
                       ("bench-step", "time training iterations of several trainers in one run"),
                       ("convert", "public dataset as downloaded -> nnU-Net raw dataset with an unlabeled pool"),
                       ("evaluate", "Dice, Jaccard, HD95, ASSD (mm and voxels), NSD of a prediction folder"),
                       ("leaderboard", "trainers x metrics over CV folds and test sets: Markdown, CSV, plots"),
                       ("benchmark", "train, predict, evaluate several trainers with one budget (resumable)"),
                       ("overlay", "contact sheet PNG of test cases: image, ground truth, each trainer's prediction, "
                                   "worst cases first"),
                       ("predict-uncertainty", "nnUNetv2_predict plus a per-case uncertainty map (entropy of MC-dropout, "
                                               "mirrored or fold predictions) and uncertainty.csv to rank cases"),
                       ("self-train", "self-training rounds with stock nnU-Net: train, predict the pool (in parts), "
                                      "build a dataset with pseudo labels, train again (resumable)"),
                       ("write-postprocessing", "nnU-Net's postprocessing.pkl for one of its two postprocessings, "
                                                "for nnUNetv2_apply_postprocessing (no cross-validation needed)")):
        sub.add_parser(name, help=text + f" (nnunet_ssl {name} -h)")

    p = sub.add_parser("demo", help="synthetic semi-supervised dataset -> nnUNetTrainer vs SGRS: table, overlays, "
                                         "report.html")
    p.add_argument("--out", default="nnunet_ssl_demo", help="folder for raw/preprocessed/results")
    p.add_argument("--dim", type=int, choices=[2, 3], default=2, help="2D PNG or 3D NIfTI task (default: 2)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per trainer (default: 8)")
    p.add_argument("--iters", type=int, default=None, help="iterations per epoch (default: 25)")
    p.add_argument("-device", "--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("-tr", nargs="+", default=None, metavar="TRAINER",
                   help="trainers to compare (default: nnUNetTrainer and the strongest SSL trainer)")
    p.add_argument("--seed", type=int, default=0, help="draw of the synthetic dataset (default: 0)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: a tiny dataset and 1 epoch x 2 iterations (the numbers mean nothing)")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    _with_clean_errors(lambda: args.func(args))


def _with_clean_errors(run):
    """Expected user errors (bad input or set-up, nnunet_ssl.utilities.inputs.UserError and its subclasses) end
    with their message and exit code 2, not a traceback."""
    from nnunet_ssl.utilities.inputs import UserError
    try:
        run()
    except UserError as e:
        print(f"nnunet_ssl: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
