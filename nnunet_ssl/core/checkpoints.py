"""What an SSL checkpoint holds beyond nnU-Net's, and the inference choices it can serve.

nnUNetv2_predict reads one entry, `network_weights`, strictly into the network that the trainer's
build_network_architecture builds. An SSL checkpoint also holds every set of weights the trainer keeps
(`ssl_weights`: "student", "teacher", ...) and the named inference choices it can serve (`inference_choices`):
a set of weights plus, for multi-output networks (nnunet_ssl.architectures.multi_output), the output mix that
`forward` returns (head 1, network a, the ensemble of both, ...). `inference_weights` names the choice that
`network_weights` holds; `nnunet_ssl set-inference-weights` lists and switches them.
"""
import glob
import os
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from nnunet_ssl.utilities.atomic import host_name, process_exists
from nnunet_ssl.utilities.inputs import UserError

MIX_KEY = "output_mix"  # the buffer of MultiOutputNetwork


class CheckpointError(UserError):
    """A model folder or checkpoint that cannot serve the request; the message names the file."""


@dataclass(frozen=True)
class InferenceChoice:
    weights: str  # key of ssl_weights
    output_mix: Optional[Tuple[float, ...]] = None  # None: the weights' own mix (a plain network has none)
    description: str = ""


def compose_weights(weight_sets: Dict[str, dict], choice: InferenceChoice) -> dict:
    """The state dict `network_weights` holds for `choice` (tensors shared with `weight_sets`, not copied)."""
    if choice.weights not in weight_sets:
        raise KeyError(f"inference choice needs weights {choice.weights!r}; the checkpoint has {sorted(weight_sets)}")
    state = dict(weight_sets[choice.weights])
    if choice.output_mix is not None:
        if MIX_KEY not in state:
            raise KeyError(f"an output mix needs a multi-output network ('{MIX_KEY}' buffer); these weights have none")
        state[MIX_KEY] = torch.tensor(choice.output_mix, dtype=state[MIX_KEY].dtype)
    return state


def choices_in(checkpoint: dict) -> Dict[str, InferenceChoice]:
    if "inference_choices" in checkpoint:
        return {name: InferenceChoice(**{**c, "output_mix": tuple(c["output_mix"]) if c["output_mix"] else None})
                for name, c in checkpoint["inference_choices"].items()}
    raise CheckpointError("has no inference choices: it was not written by a nnunet_ssl trainer of this version "
                          "(an older one kept only 'student_weights'/'teacher_weights'; retrain)")


def _choices_of(checkpoint: dict, checkpoint_file: str) -> Dict[str, InferenceChoice]:
    try:
        return choices_in(checkpoint)
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint_file}: {e}") from None


def choices_entry(choices: Dict[str, InferenceChoice]) -> dict:
    return {name: asdict(c) for name, c in choices.items()}


def write_checkpoint(checkpoint: dict, filename: str) -> None:
    """torch.save through a temporary file and a rename: a crash (or kill -9) never leaves a half-written file.
    Temporary files that killed processes left next to it are removed (a checkpoint's worth of disk each)."""
    tmp = f"{filename}.pid{os.getpid()}-{host_name()}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, filename)
    for stale in glob.glob(glob.escape(filename) + f".pid*-{host_name()}.tmp"):
        pid = stale[len(filename) + len(".pid"):-len(f"-{host_name()}.tmp")]
        if pid.isdigit() and not process_exists(int(pid)):
            os.remove(stale)


def set_inference_weights(checkpoint_file: str, use: str) -> str:
    """Put inference choice `use` into checkpoint['network_weights']; returns the previous choice."""
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    choices = _choices_of(checkpoint, checkpoint_file)
    if use not in choices:
        raise CheckpointError(f"{checkpoint_file}: no inference choice {use!r}; it has {sorted(choices)}")
    previous = checkpoint.get("inference_weights", "?")
    checkpoint["network_weights"] = compose_weights(checkpoint["ssl_weights"], choices[use])
    checkpoint["inference_weights"] = use
    write_checkpoint(checkpoint, checkpoint_file)
    return previous


def describe_choices(checkpoint_file: str) -> str:
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    current = checkpoint.get("inference_weights")
    lines = []
    for name, c in _choices_of(checkpoint, checkpoint_file).items():
        mark = "*" if name == current else " "
        mix = f", output mix {list(c.output_mix)}" if c.output_mix else ""
        lines.append(f" {mark} {name}: {c.description or c.weights + ' weights'}{mix}")
    return "\n".join(lines)


def model_checkpoints(dataset: str, configuration: str, trainer: str, folds: Sequence[str] = None,
                      plans: str = "nnUNetPlans", checkpoint_name: str = "checkpoint_final.pth"):
    """The checkpoint files of a model folder: of the given folds (each must exist), or of every fold present."""
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    model = os.path.join(nnUNet_results, maybe_convert_to_dataset_name(dataset), f"{trainer}__{plans}__{configuration}")
    if not os.path.isdir(model):
        raise CheckpointError(f"model folder not found: {model}")
    if not folds:
        present = sorted(d for d in os.listdir(model) if d.startswith("fold_")
                         and os.path.isfile(os.path.join(model, d, checkpoint_name)))
        if not present:
            raise CheckpointError(f"{model}: no fold_*/{checkpoint_name}")
        return [os.path.join(model, d, checkpoint_name) for d in present]
    files = [os.path.join(model, f"fold_{f}", checkpoint_name) for f in folds]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise CheckpointError("checkpoint(s) not found: " + ", ".join(missing))
    return files
