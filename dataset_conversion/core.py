"""Shared core of the dataset converters (`nnunet_ssl convert <dataset> SRC -d ID ...`): the types they all use.

A converter module (isic, ph2, la, pancreas, brats, flare) only *discovers* its source (helpers in
`source_tree`): it returns a `ConversionPlan` (each case with its source files, the default training /
validation / test roles, the labels, and the writer function that turns one case into nnU-Net files). The rest
is shared and lives in the modules of this package:

* the semi-supervised split (`make_split`, in `split`). With a training list (`--train-list`, or a list file
  the converter finds itself, e.g. LA's `train.list`) the labeled cases are the first N of that list, in list
  order (the convention of UA-MT, BCP and SGRS-Net). Without one, the training case ids are sorted and
  shuffled with `random.Random(seed).shuffle` (`--seed`, default 0) and the first N of that order are the
  labeled ones. The rest of the training cases form the unlabeled pool (their labels are never written);
* writers: 2D RGB PNG (`write_rgb_case`, in `images_2d`), 3D NIfTI from NIfTI / NRRD / DICOM series
  (`write_volume_case`) and from HDF5 (`write_h5_case`, both in `volumes_3d`), with label remapping (`labels`)
  and image/label checks;
* running the cases in worker processes (`-np`) with a progress bar, and `--skip-bad` (`jobs`);
* the atomic write (`convert`, the driver): everything is built in a hidden temporary folder next to the target,
  which replaces the target only when complete. A failed run leaves nothing behind; the source is only ever
  read;
* the split record `ssl_split.json` in the dataset folder (`record`).

This module holds what every one of them shares: `ConversionError` and the `Case`, `ConversionPlan` and
`ConvertOptions` types. Imports go one way: the driver `convert` imports the other modules, they never import it.

Every problem with a source file raises `ConversionError` naming the file and what is wrong.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

from nnunet_ssl.utilities.inputs import UserError


class ConversionError(UserError):
    """A source file, list or argument the converter cannot use; the message names it and what is wrong."""


# ----------------------------------------------------------------------------------------------------------
# What a converter module hands to the core


@dataclass(frozen=True)
class Case:
    """One case of the source. `images`: one path per channel (a DICOM series folder counts as one path).
    `label`: where its label should be (it may not exist: that is reported when a labeled case needs it)."""
    case_id: str
    images: Tuple[str, ...]
    label: Optional[str] = None


@dataclass
class ConversionPlan:
    name: str                                   # the part after DatasetXXX_
    converter: str                              # module name, for the split record
    source: str
    channel_names: Dict[int, str]
    labels: Dict[str, Union[int, Tuple[int, ...]]]
    file_ending: str
    writer: Callable                            # module-level function(case, image_stem, label_path, options)
    writer_options: dict
    cases: Dict[str, Case]                      # every case that can take a role, by id
    training: List[str]                         # default training cases
    validation: List[str] = field(default_factory=list)
    test: List[str] = field(default_factory=list)
    extra_unlabeled: List[Case] = field(default_factory=list)   # image-only sources -> imagesUnlabeled
    list_files: Dict[str, str] = field(default_factory=dict)    # role -> list file found by the converter
    training_in_order: bool = False             # True: `training` already is the labeled-first order
    split_description: Optional[str] = None     # says how `training_in_order` was made
    absent_reasons: Dict[str, str] = field(default_factory=dict)  # id -> why a folder holds no usable case
    list_entry_to_id: Callable[[str], Optional[str]] = None
    regions_class_order: Optional[Tuple[int, ...]] = None
    description: str = ""
    reference: str = ""
    notes: List[str] = field(default_factory=list)


@dataclass
class ConvertOptions:
    dataset_id: Optional[int]
    output_root: str
    name: Optional[str] = None
    labeled: Optional[int] = None
    labeled_fraction: Optional[float] = None
    seed: int = 0
    lists: Dict[str, str] = field(default_factory=dict)        # role -> list file given on the command line
    validation_to: str = "skip"
    test_fraction: Optional[float] = None
    skip_missing: bool = False
    skip_bad: bool = False
    num_processes: int = 1
    overwrite: bool = False
    arguments: dict = field(default_factory=dict)   # what the split record stores (re-run detection)
    command: str = ""
