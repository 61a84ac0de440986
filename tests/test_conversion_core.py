"""The shared core of the converters without any image: case lists, the semi-supervised split, label
remapping, sizes."""
import math

import numpy as np
import pytest

from nnunet_ssl.dataset_conversion.core import Case, ConversionError, ConversionPlan, ConvertOptions
from nnunet_ssl.dataset_conversion.images_2d import fitted_size
from nnunet_ssl.dataset_conversion.labels import remap_labels
from nnunet_ssl.dataset_conversion.split import make_split, read_case_list
from test_conversion_fixtures import seeded


def plan_of(training, test=(), validation=(), present=None, **fields):
    present = set(training) | set(test) | set(validation) if present is None else set(present)
    cases = {i: Case(i, (f"/src/{i}.png",), f"/src/{i}_mask.png") for i in present}
    return ConversionPlan(name="T", converter="test", source="/src", channel_names={0: "x"}, labels={"background": 0},
                          file_ending=".png", writer=None, writer_options={}, cases=cases, training=list(training),
                          test=list(test), validation=list(validation), **fields)


def options(**kw):
    return ConvertOptions(dataset_id=1, output_root="/out", **kw)


def write_list(path, ids):
    path.write_text("\n".join(ids) + "\n")
    return str(path)


@pytest.mark.parametrize("total, fraction, literature_count", [(80, 0.05, 4), (80, 0.1, 8), (62, 0.1, 6),
                                                               (62, 0.2, 12), (250, 0.1, 25)])
def test_labeled_fraction_gives_the_literature_counts(tmp_path, total, fraction, literature_count):
    ids = [f"c{i:03d}" for i in range(total)][::-1]
    split = make_split(plan_of(ids, list_files={"train": write_list(tmp_path / "train.list", ids)}),
                       options(labeled_fraction=fraction))
    assert split.labeled == ids[:literature_count] and split.unlabeled == ids[literature_count:]


def test_no_list_means_seeded_shuffle_and_all_labeled_by_default():
    ids = [f"c{i}" for i in range(9)]
    assert make_split(plan_of(ids), options(labeled=3, seed=5)).labeled == seeded(ids, 5)[:3]
    assert make_split(plan_of(ids), options(labeled=3, seed=5)).labeled != make_split(plan_of(ids),
                                                                                      options(labeled=3)).labeled
    everything = make_split(plan_of(ids), options())
    assert sorted(everything.labeled) == ids and everything.unlabeled == []


def test_case_list_formats(tmp_path):
    path = tmp_path / "train.list"
    path.write_bytes(b"\xef\xbb\xbfA1\r\n\r\n# a comment\nB2/mri_norm2.h5\r\n  C3  \nsome/dir/D4/file.h5\n")
    assert read_case_list(str(path)) == ["A1", "B2", "C3", "D4"]


@pytest.mark.parametrize("content, expected", [("A\nB\nA\n", "cases listed twice: A"), ("\n# only\n", "empty")])
def test_bad_case_lists(tmp_path, content, expected):
    (tmp_path / "x.list").write_text(content)
    with pytest.raises(ConversionError, match=expected) as error:
        read_case_list(str(tmp_path / "x.list"))
    assert str(tmp_path / "x.list") in str(error.value)


def test_case_in_train_and_test_list(tmp_path):
    lists = {"train": write_list(tmp_path / "train.list", ["a", "b"]),
             "test": write_list(tmp_path / "test.list", ["b", "c"])}
    with pytest.raises(ConversionError, match="both the train and the test set .*train.list.*test.list.*: b"):
        make_split(plan_of(["a", "b", "c"]), options(lists=lists))


def test_absent_cases_named_with_reason_and_skip_missing(tmp_path):
    lists = {"train": write_list(tmp_path / "train.list", ["a", "gone", "b", "c"])}
    plan = plan_of(["a", "b", "c"], absent_reasons={"gone": "folder has no image"})
    with pytest.raises(ConversionError, match=r"train.list: 1 of 4 absent: gone \(folder has no image\)"):
        make_split(plan, options(lists=lists, labeled=2))
    split = make_split(plan, options(lists=lists, labeled=2, skip_missing=True))
    assert split.labeled == ["a"] and split.labeled_absent == ["gone"] and split.unlabeled == ["b", "c"]


@pytest.mark.parametrize("kw, expected", [
    ({"labeled": 0}, "gives 0 labeled cases"), ({"labeled": 7}, "gives 7 labeled cases, but there are 6"),
    ({"labeled_fraction": 1.5}, "must be in \\(0, 1\\]"), ({"validation_to": "nowhere"}, "--validation-to")])
def test_bad_split_arguments(kw, expected):
    with pytest.raises(ConversionError, match=expected):
        make_split(plan_of([f"c{i}" for i in range(6)]), options(**kw))


def test_test_fraction_only_without_a_test_set(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    split = make_split(plan_of(ids), options(test_fraction=0.2, labeled=2))
    n_test = math.floor(0.2 * len(ids) + 0.5)
    assert split.test == seeded(ids)[:n_test] and split.labeled == seeded(ids)[n_test:n_test + 2]
    with pytest.raises(ConversionError, match="already has a test set"):
        make_split(plan_of(ids[:8], test=ids[8:]), options(test_fraction=0.2))
    with pytest.raises(ConversionError, match="cannot be combined with a training list"):
        make_split(plan_of(ids, list_files={"train": write_list(tmp_path / "t.list", ids)}), options(test_fraction=0.2))


def test_validation_appended_after_the_training_list(tmp_path):
    train = write_list(tmp_path / "train.list", ["t2", "t1"])
    plan = plan_of(["t1", "t2"], validation=["v1"], list_files={"train": train})
    split = make_split(plan, options(labeled=2, validation_to="train"))
    assert split.labeled == ["t2", "t1"] and split.unlabeled == ["v1"]
    assert make_split(plan, options(validation_to="test")).test == ["v1"]


def test_remap_labels_reports_every_unexpected_value():
    values = np.array([[0, 255], [7, 9]], np.uint8)
    with pytest.raises(ConversionError, match=r"/x/mask.png: unexpected label values 7, 9 \(expected 0, 255\)"):
        remap_labels(values, {0: 0, 255: 1}, "/x/mask.png")
    assert remap_labels(np.array([0, 2, 1, 4]), {0: 0, 2: 1, 1: 2, 4: 3}, "s").tolist() == [0, 1, 2, 3]


def test_fitted_size_keeps_aspect_ratio():
    assert fitted_size((6000, 4000), 256) == (256, round(4000 * 256 / 6000))
    assert fitted_size((100, 50), 256) == (100, 50) and fitted_size((100, 50), None) == (100, 50)
