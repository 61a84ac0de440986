"""What a command checks before it starts: nnU-Net's folders, the dataset, the trainer. Each problem is a
`UserError`, which the CLI prints as one line (exit code 2) instead of a traceback from deep inside nnU-Net."""
import contextlib
import difflib
import io
import os
from typing import Sequence


class UserError(RuntimeError):
    """Bad input or set-up; the message names the file, folder or value and what to do."""


def nnunet_folder(variable: str) -> str:
    """The folder nnU-Net's environment variable `variable` (nnUNet_raw, nnUNet_preprocessed, nnUNet_results)
    points to."""
    import nnunetv2.paths

    value = getattr(nnunetv2.paths, variable).get()
    if not value:
        raise UserError(f"{variable} is not set: nnU-Net needs it (export {variable}=/path/to/folder; see nnU-Net's "
                        f"documentation/setting_up_paths.md)")
    return value


def dataset_name(dataset_name_or_id, needs: Sequence[str] = ("nnUNet_preprocessed",)) -> str:
    """nnU-Net's dataset name (DatasetXXX_Name) for a name or an id, checked to exist under each folder in
    `needs` (nnUNet_raw for commands that read the raw dataset, nnUNet_preprocessed for training)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    roots = {variable: nnunet_folder(variable) for variable in needs}
    try:
        name = maybe_convert_to_dataset_name(str(dataset_name_or_id))
    except ValueError:
        raise UserError(f"dataset {dataset_name_or_id!r}: neither an id (e.g. 501) nor a name DatasetXXX_Name") from None
    except RuntimeError as e:  # no folder with that id, or several
        what = "several datasets have" if "More than one" in str(e) else "no dataset has"
        looked = ", ".join(f"{k}={os.environ.get(k)}" for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
        raise UserError(f"dataset {dataset_name_or_id}: {what} the id {dataset_name_or_id} (Dataset"
                        f"{int(dataset_name_or_id):03d}_*; looked in {looked})") from None
    for variable, root in roots.items():
        if not os.path.isdir(os.path.join(root, name)):
            what = "planned and preprocessed (nnUNetv2_plan_and_preprocess)" if variable == "nnUNet_preprocessed" \
                else "in nnU-Net's raw format"
            raise UserError(f"{os.path.join(root, name)} does not exist: dataset {dataset_name_or_id} must be {what}")
    return name


def trainer_class(trainer_name: str):
    """The trainer class nnU-Net's lookup finds (its own trainers and the nnUNet_extTrainer folders), or a
    UserError with the closest names."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ssl.utilities.paths import ensure_ext_trainer_env, trainers_folder

    ensure_ext_trainer_env()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates every folder and module it searches
            return recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError:
        known = ["nnUNetTrainer"] + sorted(f[:-3] for f in os.listdir(trainers_folder())
                                           if f.startswith("nnUNetTrainer") and f.endswith(".py"))
        close = difflib.get_close_matches(trainer_name, known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else f"this plugin's trainers: {', '.join(known[1:])}"
        raise UserError(f"trainer {trainer_name!r} not found in nnU-Net or nnUNet_extTrainer "
                        f"({os.environ.get('nnUNet_extTrainer')}); {hint}") from None
