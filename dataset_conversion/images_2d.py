"""2D images (ISIC, PH2): reading RGB images (PNG / JPEG / BMP) and binary lesion masks, resizing with
`--max-size`, the RGB PNG writer `write_rgb_case`, and `lesion_plan`, the plan shape of both datasets."""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_ssl.dataset_conversion.core import Case, ConversionError, ConversionPlan
from nnunet_ssl.dataset_conversion.labels import remap_labels


PNG_ENDING = ".png"
RGB_CHANNELS = {0: "R", 1: "G", 2: "B"}


# ----------------------------------------------------------------------------------------------------------
# 2D RGB writer (ISIC, PH2)


def load_rgb_image(path: str):
    from PIL import Image

    if not os.path.isfile(path):
        raise ConversionError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConversionError(f"{path}: cannot read image ({e})") from None


def load_binary_mask(path: str, image_path: str) -> np.ndarray:
    """A lesion mask -> uint8 0/1. 1-bit masks (Pillow mode "1") hold 0/1; 8-bit grey or RGB masks must hold
    only 0 and 255 (RGB ones with the three channels equal); anything else is an error, never a guess."""
    from PIL import Image

    if not os.path.isfile(path):
        raise ConversionError(f"{path}: missing mask for image {image_path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "1":
                return np.asarray(im, dtype=np.uint8)
            if im.mode not in ("L", "LA", "P", "RGB", "RGBA"):
                raise ConversionError(f"{path}: unsupported mask pixel format {im.mode!r} (expected 1-bit, 8-bit "
                                      f"grey or RGB with values 0/255)")
            grey = _grey_values(np.asarray(im.convert("RGB")), path)
    except (OSError, ValueError, SyntaxError) as e:
        raise ConversionError(f"{path}: cannot read mask ({e})") from None
    return remap_labels(grey, {0: 0, 255: 1}, path)


def _grey_values(rgb: np.ndarray, path: str) -> np.ndarray:
    coloured = int(np.count_nonzero((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])))
    if coloured:
        raise ConversionError(f"{path}: colour mask ({coloured} pixels where R, G, B differ; expected a grey "
                              f"0/255 mask)")
    return rgb[..., 0]


def fitted_size(size: Tuple[int, int], max_size: Optional[int]) -> Tuple[int, int]:
    """(w, h) scaled down so that the longer side is at most `max_size` (aspect ratio kept)."""
    if not max_size or max(size) <= max_size:
        return size
    scale = max_size / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def write_rgb_case(case: Case, image_stem: str, label_path: Optional[str], options: dict) -> None:
    """One RGB image -> `<stem>_0000.png` (nnU-Net's natural-image convention: one file, channels R, G, B);
    the mask -> 0/1 PNG. `--max-size`: image resampled with Lanczos (smooth), mask with nearest neighbour, so
    no label value is invented; both to the same size, so they stay aligned."""
    from PIL import Image

    image = load_rgb_image(case.images[0])
    mask = None
    if label_path is not None:
        mask = load_binary_mask(case.label, case.images[0])
        if mask.shape[::-1] != image.size:
            raise ConversionError(f"{case.label}: size mismatch: mask is {mask.shape[1]}x{mask.shape[0]}, image "
                                  f"{case.images[0]} is {image.size[0]}x{image.size[1]}")
    size = fitted_size(image.size, options.get("max_size"))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    image.save(image_stem + "_0000" + PNG_ENDING)
    if mask is not None:
        mask_image = Image.fromarray(mask, mode="L")
        if size != mask_image.size:
            mask_image = mask_image.resize(size, Image.Resampling.NEAREST)
        mask_image.save(label_path)


# ----------------------------------------------------------------------------------------------------------
# 2D lesion datasets (ISIC, PH2): one plan shape


def lesion_plan(name: str, converter: str, source: str, cases: Dict[str, Case], training: List[str],
                max_size: Optional[int], **fields) -> ConversionPlan:
    """Plan of a dermoscopy dataset: RGB images, binary lesion masks, nnU-Net's natural-image convention."""
    return ConversionPlan(name=name, converter=converter, source=source, channel_names=dict(RGB_CHANNELS),
                          labels={"background": 0, "lesion": 1}, file_ending=PNG_ENDING, writer=write_rgb_case,
                          writer_options={"max_size": max_size}, cases=cases, training=training, **fields)
