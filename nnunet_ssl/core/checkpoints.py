"""Switch which weights of an SSL checkpoint nnUNetv2_predict uses (student or EMA teacher); edit checkpoints
nnU-Net wrote, in place and atomically."""
import os
from contextlib import contextmanager
from typing import Sequence

import torch


@contextmanager
def edited_checkpoint(checkpoint_file: str):
    """Yields the checkpoint as a dict; on a clean exit, writes it back through a temporary file, so a crash never
    leaves a half-written checkpoint."""
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    yield checkpoint
    tmp = checkpoint_file + ".tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, checkpoint_file)


def set_inference_weights(checkpoint_file: str, use: str) -> str:
    """Point checkpoint['network_weights'] at the student or teacher weights; returns the previous choice."""
    if use not in ("teacher", "student"):
        raise ValueError(f"use must be 'teacher' or 'student', got {use!r}")
    with edited_checkpoint(checkpoint_file) as checkpoint:
        if f"{use}_weights" not in checkpoint:
            raise RuntimeError(f"{checkpoint_file}: has no '{use}_weights'; it was not written by a nnunet_ssl trainer")
        previous = checkpoint.get("inference_weights", "?")
        checkpoint["network_weights"] = checkpoint[f"{use}_weights"]
        checkpoint["inference_weights"] = use
    return previous


def model_checkpoints(dataset: str, configuration: str, trainer: str, folds: Sequence[str],
                      plans: str = "nnUNetPlans", checkpoint_name: str = "checkpoint_final.pth"):
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    model = os.path.join(nnUNet_results, maybe_convert_to_dataset_name(dataset), f"{trainer}__{plans}__{configuration}")
    files = [os.path.join(model, f"fold_{f}", checkpoint_name) for f in folds]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError("checkpoint(s) not found: " + ", ".join(missing))
    return files
