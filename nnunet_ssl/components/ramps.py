"""Ramp-up schedules for unsupervised loss weights."""
import math


def gaussian_rampup(step: float, rampup_length: float) -> float:
    """exp(-5 (1 - t/T)^2) for t < T, then 1 (Laine & Aila 2017; Tarvainen & Valpola 2017).

    rampup_length <= 0 means no ramp-up (weight 1 from the start)."""
    if rampup_length <= 0:
        return 1.0
    t = min(max(step, 0.0), rampup_length) / rampup_length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
