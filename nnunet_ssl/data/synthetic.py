"""Synthetic semi-supervised datasets (no download): few labeled, many unlabeled, a labeled test set.

2D: RGB PNG "lesions" (nnU-Net's natural-image convention, like PH2/ISIC): a dark lesion (label 1) with
a darker core (label 2) on textured skin.
3D: single-channel NIfTI volumes with a bright ellipsoid (label 1) and a core (label 2) in noise.
"""
import json
import os

import numpy as np

from nnunet_ssl.utilities.atomic import atomic_folder


def _smooth_noise(rng, shape, scale):
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(rng.standard_normal(shape), scale)


def _ellipse(shape, center, radii, angle=0.0):
    grids = np.meshgrid(*[np.arange(s) - c for s, c in zip(shape, center)], indexing="ij")
    if len(shape) == 2:
        y, x = grids
        ca, sa = np.cos(angle), np.sin(angle)
        grids = [ca * y + sa * x, -sa * y + ca * x]
    return sum((g / r) ** 2 for g, r in zip(grids, radii)) <= 1.0


def _placement(rng, size, lesion_size, dim, default_centres, default_radii):
    """Centre and radii (voxels) of a lesion whose radius is `lesion_size` x the image side (None: centre and
    radii per axis drawn from the fractions `default_centres` and `default_radii`): large lesions stay near the
    centre (they reach the image's border, as in dermoscopy), small ones go anywhere."""
    if lesion_size is None:
        return rng.uniform(*default_centres, dim) * size, rng.uniform(*default_radii, dim) * size
    margin = 0.5 - 0.7 * lesion_size
    radii = lesion_size * rng.uniform([0.75] + [1.0] * (dim - 1), 1.0) * size  # aspect ratio 0.75 to 1
    return rng.uniform(0.5 - margin, 0.5 + margin, dim) * size, radii


def make_case_2d(rng, size=64, faintness=0.0, lesion_size=None):
    skin = np.array([200, 150, 130], float) + rng.normal(0, 10, 3)
    img = np.ones((size, size, 3)) * skin + 55 * _smooth_noise(rng, (size, size, 1), 3) * rng.uniform(0.5, 1.5)
    seg = np.zeros((size, size), np.uint8)
    center, radii = _placement(rng, size, lesion_size, 2, (0.3, 0.7), (0.12, 0.3))
    lesion = _ellipse((size, size), center, radii, rng.uniform(0, np.pi)) & \
        (_smooth_noise(rng, (size, size), 4) > -0.15)  # ragged border
    core = _ellipse((size, size), center, radii * rng.uniform(0.35, 0.6), rng.uniform(0, np.pi)) & lesion
    # faintness 0: a dark lesion half-way to its colour; 1: barely darker than the skin's texture
    lesion_colour = skin * rng.uniform(0.45, 0.7)
    mix = 0.5 * (1 - 0.8 * faintness)
    img[lesion] = (1 - mix) * img[lesion] + mix * lesion_colour
    img[core] = img[core] * (1 - (1 - rng.uniform(0.5, 0.75)) * (1 - 0.7 * faintness))
    seg[lesion] = 1
    seg[core] = 2
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), seg


def make_case_3d(rng, size=32, faintness=0.0, lesion_size=None):
    shape = (size, size, size)
    img = 0.3 * _smooth_noise(rng, shape, 2) + rng.normal(0, 0.25, shape)
    seg = np.zeros(shape, np.uint8)
    center, radii = _placement(rng, size, lesion_size, 3, (0.35, 0.65), (0.15, 0.3))
    organ = _ellipse(shape, center, radii)
    core = _ellipse(shape, center, radii * 0.45)
    visibility = 1 - 0.8 * faintness
    img[organ] += rng.uniform(0.6, 1.0) * visibility
    img[core] += rng.uniform(0.4, 0.8) * visibility
    seg[organ] = 1
    seg[core] = 2
    return (img * 100).astype(np.float32), seg


def _write_2d(img, seg, image_file, label_file=None):
    from PIL import Image
    Image.fromarray(img).save(image_file)
    if label_file is not None:
        Image.fromarray(seg).save(label_file)


def _write_3d(img, seg, image_file, label_file=None, spacing=(1.0, 1.0, 1.5)):
    import SimpleITK as sitk
    for arr, f in ((img, image_file), (seg, label_file)):
        if f is None:
            continue
        itk = sitk.GetImageFromArray(arr)
        itk.SetSpacing(spacing)
        sitk.WriteImage(itk, f)


def write_synthetic_dataset(raw_root: str, dataset_id: int, name: str = "SSLDemo", dim: int = 2,
                            n_labeled: int = 4, n_unlabeled: int = 40, n_test: int = 10, size: int = None,
                            seed: int = 0, labeled_faintness=(0.0, 0.3), faintness=(0.0, 1.0),
                            labeled_lesion_size=None, lesion_size=None, even_spread: bool = False) -> str:
    """Write DatasetXXX_name into raw_root (atomically) and return its folder.

    The labeled cases' lesions are drawn from `labeled_faintness` only (clearly visible); the unlabeled pool and
    the test set span `faintness` (down to barely visible). Likewise for the lesion's radius as a fraction of the
    image side, `labeled_lesion_size` and `lesion_size` (None: 0.12 to 0.3 per axis in 2D, 0.15 to 0.3 in 3D,
    for labeled and unlabeled cases alike).

    even_spread: within each group (labeled, test, unlabeled) of n cases, faintness and lesion size are each drawn
    once from every n-th of their span, in random order (a Latin hypercube), instead of independently: with 20 test
    cases, independent draws gave one seed 7 and another 13 lesions above 0.3 of the side, and so very different
    tasks; spread evenly, every seed's test set covers the whole range alike."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    ending = ".png" if dim == 2 else ".nii.gz"
    make_case = make_case_2d if dim == 2 else make_case_3d
    size = size or (64 if dim == 2 else 32)

    def spread(n, span):
        return span[0] + (span[1] - span[0]) * (rng.permutation(n) + rng.uniform(size=n)) / n

    def draws(n, span, sizes):
        """(faintness, lesion size) of each of n cases, lazily: independent draws come just before each case is
        made (the generator's original random order), even ones for the whole group before its first case."""
        if even_spread:
            yield from zip(spread(n, span), [None] * n if sizes is None else spread(n, sizes))
        else:
            for _ in range(n):
                yield rng.uniform(*span), None if sizes is None else rng.uniform(*sizes)

    write = _write_2d if dim == 2 else _write_3d
    with atomic_folder(folder) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled"):
            os.makedirs(os.path.join(tmp, sub))
        for i, (faint, radius) in enumerate(draws(n_labeled, labeled_faintness, labeled_lesion_size)):
            img, seg = make_case(rng, size, faint, radius)
            write(img, seg, os.path.join(tmp, "imagesTr", f"case{i:03d}_0000{ending}"),
                  os.path.join(tmp, "labelsTr", f"case{i:03d}{ending}"))
        for i, (faint, radius) in enumerate(draws(n_test, faintness, lesion_size)):
            img, seg = make_case(rng, size, faint, radius)
            write(img, seg, os.path.join(tmp, "imagesTs", f"test{i:03d}_0000{ending}"),
                  os.path.join(tmp, "labelsTs", f"test{i:03d}{ending}"))
        for i, (faint, radius) in enumerate(draws(n_unlabeled, faintness, lesion_size)):
            img, _ = make_case(rng, size, faint, radius)  # its label is never written
            write(img, None, os.path.join(tmp, "imagesUnlabeled", f"unl{i:04d}_0000{ending}"))
        channels = {"0": "R", "1": "G", "2": "B"} if dim == 2 else {"0": "MRI"}
        dataset_json = {"channel_names": channels, "labels": {"background": 0, "lesion": 1, "core": 2},
                        "numTraining": n_labeled, "file_ending": ending, "name": name,
                        "description": f"nnunet_ssl synthetic {dim}D dataset (seed {seed}): {n_labeled} labeled, "
                                       f"{n_unlabeled} unlabeled, {n_test} test cases"}
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(dataset_json, f, indent=1)
    return folder
