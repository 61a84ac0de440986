"""Input perturbations for teacher/student views."""
import torch


def gaussian_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """x + clip(N(0, std^2), -clip, clip), the teacher's view in Mean Teacher / UA-MT."""
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)
