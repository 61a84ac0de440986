"""Where the plugin's trainers live, for nnU-Net's `nnUNet_extTrainer` lookup."""
import os


def trainers_folder() -> str:
    """Found without importing the trainers (a higher layer; importing them would import nnU-Net)."""
    import importlib.util
    return os.path.abspath(list(importlib.util.find_spec("nnunet_ssl.trainers").submodule_search_locations)[0])


def with_plugin_trainers(ext_trainer: str = None) -> str:
    """A `nnUNet_extTrainer` value (os.pathsep-separated folders, as nnU-Net splits it): the given folders, kept
    in their order, and the plugin's trainers folder once, at the end."""
    folder = trainers_folder()
    current = [p for p in (ext_trainer or "").split(os.pathsep) if p]
    return os.pathsep.join(current if folder in current else current + [folder])


def ensure_ext_trainer_env() -> None:
    """Make nnU-Net find the plugin's trainers in this process and its children."""
    os.environ["nnUNet_extTrainer"] = with_plugin_trainers(os.environ.get("nnUNet_extTrainer"))
