"""Labels: source label values remapped to consecutive nnU-Net labels, and the check of a plan's labels."""
from typing import Dict, Tuple, Union

import numpy as np

from nnunet_ssl.dataset_conversion.core import ConversionError


# ----------------------------------------------------------------------------------------------------------
# Labels


def remap_labels(values: np.ndarray, mapping: Dict[int, int], path: str) -> np.ndarray:
    """Source label values -> consecutive nnU-Net labels; any value not in `mapping` is an error."""
    found = np.unique(values)
    unexpected = [v for v in found.tolist() if v not in mapping]
    if unexpected:
        shown = ", ".join(str(v) for v in unexpected[:10])
        raise ConversionError(f"{path}: unexpected label values {shown} (expected "
                              f"{', '.join(str(k) for k in sorted(mapping))})")
    out = np.zeros(values.shape, dtype=np.uint8)
    for source_value, target_value in mapping.items():
        if target_value:
            out[values == source_value] = target_value
    return out


def check_consecutive_labels(labels: Dict[str, Union[int, Tuple[int, ...]]]) -> None:
    """nnU-Net wants background 0 and labels 1..K without gaps (region entries are tuples of those)."""
    values = set()
    for v in labels.values():
        values.update(v if isinstance(v, (tuple, list)) else (v,))
    if labels.get("background") != 0 or sorted(values) != list(range(len(values))):
        raise ConversionError(f"internal: labels {labels} are not background 0 and consecutive integers")
