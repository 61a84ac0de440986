"""Where the plugin's trainers live, for nnU-Net's `nnUNet_extTrainer` lookup."""
import os


def trainers_folder() -> str:
    import nnunet_ssl.trainers
    return os.path.dirname(os.path.abspath(nnunet_ssl.trainers.__file__))


def ensure_ext_trainer_env() -> None:
    """Make nnU-Net find the plugin's trainers in this process and its children."""
    folder = trainers_folder()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if folder not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(current + [folder])
