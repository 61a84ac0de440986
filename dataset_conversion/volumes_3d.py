"""3D volumes: reading NIfTI / NRRD files, DICOM series and HDF5, their geometry and its checks, labels put
on the image grid (reorientation), and the NIfTI writers `write_volume_case` and `write_h5_case`."""
import os
import shutil
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunet_ssl.dataset_conversion.core import Case, ConversionError
from nnunet_ssl.dataset_conversion.labels import remap_labels


NIFTI_ENDING = ".nii.gz"
# image/label grids that differ by less than this are the same grid (float noise in headers)
SPACING_RTOL, ORIGIN_ATOL_MM, DIRECTION_ATOL = 1e-4, 1e-3, 1e-4


# ----------------------------------------------------------------------------------------------------------
# 3D: reading volumes (NIfTI, NRRD, DICOM series, HDF5) and geometry


@dataclass(frozen=True)
class Geometry:
    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]

    @staticmethod
    def of(image_or_reader) -> "Geometry":
        return Geometry(tuple(image_or_reader.GetSize()), tuple(image_or_reader.GetSpacing()),
                        tuple(image_or_reader.GetOrigin()), tuple(image_or_reader.GetDirection()))

    def apply_to(self, image):
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def same_grid(self, other: "Geometry") -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=SPACING_RTOL, atol=0)
                and np.allclose(self.origin, other.origin, rtol=0, atol=ORIGIN_ATOL_MM)
                and np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_ATOL))

    def identical(self, other: "Geometry") -> bool:
        """What nnU-Net's integrity check compares (np.allclose with its default tolerances)."""
        return (self.size == other.size and np.allclose(self.spacing, other.spacing)
                and np.allclose(self.origin, other.origin) and np.allclose(self.direction, other.direction))

    def describe(self) -> str:
        fmt = lambda v: "(" + ", ".join(f"{x + 0.0:.4g}" for x in v) + ")"  # noqa: E731 (+0.0: no "-0")
        return (f"size {self.size}, spacing {fmt(self.spacing)}, origin {fmt(self.origin)}, "
                f"direction {fmt(self.direction)}")


def _sitk_message(e: Exception) -> str:
    """The useful line of a SimpleITK exception (they start with the C++ source location)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "sitk::ERROR" in ln] or lines[-1:]
    return useful[0].split("sitk::ERROR:")[-1].strip() if useful else type(e).__name__


def read_header(path: str) -> Geometry:
    """Geometry without reading the voxels (fast check of files that are copied as they are)."""
    import SimpleITK as sitk

    if not os.path.isfile(path):
        raise ConversionError(f"{path}: file does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ConversionError(f"{path}: cannot read ({_sitk_message(e)})") from None
    _check_3d_scalar(reader.GetDimension(), reader.GetNumberOfComponents(), path)
    return Geometry.of(reader)


def _check_3d_scalar(dimension: int, components: int, path: str) -> None:
    if dimension != 3 or components != 1:
        raise ConversionError(f"{path}: expected a 3D single-channel image, got {dimension}D with {components} "
                              f"component(s) per voxel")


def read_volume(path: str):
    """A 3D image from a file SimpleITK reads (NIfTI, NRRD, ...) or a folder holding one DICOM series."""
    import SimpleITK as sitk

    if os.path.isdir(path):
        return read_dicom_series(path)
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: file does not exist")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise ConversionError(f"{path}: cannot read ({_sitk_message(e)})") from None
    _check_3d_scalar(image.GetDimension(), image.GetNumberOfComponentsPerPixel(), path)
    return image


def _dicom_files(folder: str) -> List[str]:
    found = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if n.lower().endswith(".dcm")]
    if not found:
        raise ConversionError(f"{folder}: no DICOM (*.dcm) files in this folder or below")
    return sorted(found)


def _dicom_tags(path: str) -> Tuple[str, np.ndarray, np.ndarray]:
    """(series uid, ImagePositionPatient, ImageOrientationPatient) of one DICOM file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
        series = reader.GetMetaData("0020|000e").strip() if reader.HasMetaDataKey("0020|000e") else ""
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        orientation = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
    except RuntimeError as e:
        raise ConversionError(f"{path}: cannot read DICOM header ({_sitk_message(e)})") from None
    except ValueError:
        raise ConversionError(f"{path}: DICOM file without a usable ImagePositionPatient (0020|0032) / "
                              f"ImageOrientationPatient (0020|0037)") from None
    if position.shape != (3,) or orientation.shape != (6,):
        raise ConversionError(f"{path}: malformed ImagePositionPatient / ImageOrientationPatient")
    return series, position, orientation


def sort_slices_by_position(files: Sequence[str]) -> List[str]:
    """DICOM slice files ordered by their position along the slice normal (ImagePositionPatient projected on
    the cross product of the ImageOrientationPatient rows), never by file name, with the checks that make a
    regular 3D grid: one series, one orientation, no duplicate position, even slice spacing."""
    tags = [(f,) + _dicom_tags(f) for f in files]
    series = sorted({t[1] for t in tags})
    if len(series) > 1:
        raise ConversionError(f"{os.path.dirname(files[0])}: {len(series)} DICOM series in one case "
                              f"({', '.join(series)}); expected one")
    orientation = tags[0][3]
    for f, _, _, o in tags:
        if not np.allclose(o, orientation, atol=1e-4):
            raise ConversionError(f"{f}: slice orientation {o.tolist()} differs from {tags[0][0]}")
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(((float(np.dot(p, normal)), f) for f, _, p, _ in tags))
    _check_slice_spacing(ordered)
    return [f for _, f in ordered]


def _check_slice_spacing(ordered: List[Tuple[float, str]]) -> None:
    if len(ordered) < 2:
        return
    gaps = np.diff([z for z, _ in ordered])
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise ConversionError(f"{ordered[i + 1][1]}: same slice position as {ordered[i][1]} (duplicate slice)")
    if np.max(np.abs(gaps - np.median(gaps))) > 0.01 * np.median(gaps) + 1e-3:
        i = int(np.argmax(np.abs(gaps - np.median(gaps))))
        raise ConversionError(f"{ordered[i + 1][1]}: uneven slice spacing ({gaps[i]:.3f} mm after "
                              f"{ordered[i][1]}, median {np.median(gaps):.3f} mm): missing slice?")


def read_dicom_series(folder: str):
    import SimpleITK as sitk

    files = sort_slices_by_position(_dicom_files(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ConversionError(f"{folder}: cannot read the DICOM series ({_sitk_message(e)})") from None
    return image


def array_xyz_to_image(array: np.ndarray, spacing: Sequence[float]):
    """An (x, y, z) array (the HDF5 convention of the SSL literature) -> SimpleITK image. GetImageFromArray
    reads numpy arrays as (z, y, x), hence the transpose. Origin 0, identity direction."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


def _grid_corners(geometry: Geometry) -> np.ndarray:
    """Physical positions of the 8 corner voxel centres, sorted (order-free comparison of two grids)."""
    size = np.array(geometry.size) - 1
    direction = np.array(geometry.direction).reshape(3, 3)
    corners = [np.array(geometry.origin) + direction @ (np.array(c) * size * np.array(geometry.spacing))
               for c in np.ndindex(2, 2, 2)]
    return np.array(sorted(map(tuple, np.round(corners, 2))))


def align_label(label, label_path: str, reference: Geometry, image_path: str, mode: str) -> np.ndarray:
    """The label's voxels on the image grid, as a (z, y, x) array.

    `strict`: the label must already share the image grid. `physical`: a label stored in another voxel order
    (axes flipped or permuted, e.g. slices top-down instead of bottom-up) is put on the image grid through the
    physical positions in both headers; only exact reorientations are accepted (same corner positions, every
    labeled voxel kept). `voxel`: the headers are ignored and the label's voxel grid is taken as the image's
    (for labels with broken headers; same size required)."""
    import SimpleITK as sitk

    geometry = Geometry.of(label)
    mismatch = f"{label_path}: geometry differs from the image {image_path}: label {geometry.describe()}; " \
               f"image {reference.describe()}"
    if geometry.same_grid(reference) or (mode == "voxel" and geometry.size == reference.size):
        return sitk.GetArrayFromImage(label)
    if mode != "physical":
        raise ConversionError(mismatch)
    if not np.allclose(_grid_corners(geometry), _grid_corners(reference), atol=0.5 * min(reference.spacing)):
        raise ConversionError(mismatch + " (not a reorientation of the same grid; if the label header is wrong "
                                         "but its voxels match the image, use --label-geometry voxel)")
    moved = sitk.Resample(label, reference.size, sitk.Transform(), sitk.sitkNearestNeighbor, reference.origin,
                          reference.spacing, reference.direction, 0, label.GetPixelID())
    before, after = sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(moved)
    if np.count_nonzero(before) != np.count_nonzero(after):
        raise ConversionError(mismatch + " (reorienting lost labeled voxels)")
    return after


def _write_image(image, path: str) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(image, path, useCompression=True)


def _write_label(values: np.ndarray, geometry: Geometry, path: str) -> None:
    import SimpleITK as sitk

    _write_image(geometry.apply_to(sitk.GetImageFromArray(values)), path)


def _write_channel(src: str, dst: str, reference: Optional[Geometry]) -> Geometry:
    """One channel. A `.nii.gz` file already on the reference grid is copied byte for byte (fast, lossless);
    anything else (NRRD, `.nii`, DICOM, float noise in the header) is read and written with the reference
    geometry, after checking it is the same grid."""
    if os.path.isfile(src) and src.lower().endswith(NIFTI_ENDING):
        header = read_header(src)
        if reference is None or header.identical(reference):
            shutil.copyfile(src, dst)
            return header
    image = read_volume(src)
    geometry = Geometry.of(image)
    if reference is not None:
        if not geometry.same_grid(reference):
            raise ConversionError(f"{src}: geometry differs from the case's first channel: {geometry.describe()}; "
                                  f"first channel {reference.describe()}")
        geometry = reference
    _write_image(geometry.apply_to(image), dst)
    return geometry


def write_volume_case(case: Case, image_stem: str, label_path: Optional[str], options: dict) -> None:
    """3D case from NIfTI / NRRD files or a DICOM series folder -> `<stem>_0000.nii.gz`, `_0001`, ... and the
    label remapped with `options["label_map"]` onto the first channel's geometry (`options["label_geometry"]`:
    strict | physical | voxel, see `align_label`)."""
    reference = None
    for channel, src in enumerate(case.images):
        reference = _write_channel(src, f"{image_stem}_{channel:04d}{NIFTI_ENDING}", reference)
    if label_path is None:
        return
    if not case.label or not os.path.isfile(case.label):
        raise ConversionError(f"{case.label}: missing label for image {case.images[0]}")
    label = read_volume(case.label)
    values = align_label(label, case.label, reference, case.images[0], options.get("label_geometry", "strict"))
    _write_label(remap_labels(values, options["label_map"], case.label), reference, label_path)


def _read_h5_dataset(h5file, key: str, path: str) -> np.ndarray:
    if key not in h5file:
        raise ConversionError(f"{path}: no dataset {key!r} in the HDF5 file (has: {', '.join(h5file.keys())})")
    array = h5file[key][()]
    if array.ndim != 3:
        raise ConversionError(f"{path}: dataset {key!r} has shape {array.shape}, expected 3D (x, y, z)")
    return array


def write_h5_case(case: Case, image_stem: str, label_path: Optional[str], options: dict) -> None:
    """The SSL literature's HDF5 case (`image` float32 and `label` uint8, axes x, y, z, no spacing stored)
    -> NIfTI with `options["spacing"]` (mm), origin 0, identity direction; image and label share it."""
    import h5py

    path = case.images[0]
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: file does not exist")
    try:
        with h5py.File(path, "r") as f:
            image = _read_h5_dataset(f, "image", path)
            label = _read_h5_dataset(f, "label", path) if label_path is not None else None
    except OSError as e:
        raise ConversionError(f"{path}: cannot read HDF5 file ({e})") from None
    if not np.all(np.isfinite(image)):
        raise ConversionError(f"{path}: the image holds NaN or infinite values")
    sitk_image = array_xyz_to_image(image.astype(np.float32), options["spacing"])
    _write_image(sitk_image, image_stem + "_0000" + NIFTI_ENDING)
    if label is not None:
        if label.shape != image.shape:
            raise ConversionError(f"{path}: size mismatch: label {label.shape} vs image {image.shape}")
        values = remap_labels(np.transpose(label, (2, 1, 0)), options["label_map"], path)
        _write_label(values, Geometry.of(sitk_image), label_path)
