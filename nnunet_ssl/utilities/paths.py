"""Where the plugin's trainers live, for nnU-Net's `nnUNet_extTrainer` lookup."""
import os


def trainers_folder() -> str:
    """Found without importing the trainers (a higher layer; importing them would import nnU-Net)."""
    import importlib.util
    return os.path.abspath(list(importlib.util.find_spec("nnunet_ssl.trainers").submodule_search_locations)[0])


def ensure_ext_trainer_env() -> None:
    """Make nnU-Net find the plugin's trainers in this process and its children."""
    folder = trainers_folder()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if folder not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(current + [folder])
