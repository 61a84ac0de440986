"""`progress_ssl.png`, beside nnU-Net's `progress.png`: the per-epoch means of a trainer's own logged keys, so a
user sees at a glance whether the unsupervised part does anything (a consistency loss that stays at 0, a ramp
weight that never rises, a region that is always empty)."""
import os
from typing import Dict, List, Sequence


def plot_ssl_progress(logged: Dict[str, List[float]], loss_keys: Sequence[str], other_keys: Sequence[str],
                      filename: str, title: str = "", epochs: Sequence[int] = None) -> None:
    """Two panels: the losses (supervised and unsupervised terms, log scale when all are positive) and the
    other keys (ramp weights, thresholds, fractions), over `epochs` (default 0, 1, ...: one value per epoch from
    the first). Written to a temporary file and renamed."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # nnU-Net's progress.png sets seaborn's font_scale=2.5 for the whole process: draw in matplotlib's defaults
    with plt.style.context("default"):
        panels = [(keys, label) for keys, label in ((loss_keys, "loss"), (other_keys, "value")) if keys]
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
        for ax, (keys, label) in zip(axes[:, 0], panels):
            for key in keys:
                values = logged.get(key, [])
                x = range(len(values)) if epochs is None else epochs[:len(values)]
                ax.plot(x, values, marker="o" if len(values) < 30 else None, label=key)
            values = [v for key in keys for v in logged.get(key, [])]
            if label == "loss" and values and min(values) > 0:
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # beside the curves, not on them
        if title:
            axes[0, 0].set_title(title)
        fig.tight_layout()
        temp = f"{filename}.pid{os.getpid()}.tmp.png"
        fig.savefig(temp, dpi=80)
    plt.close(fig)
    os.replace(temp, filename)
