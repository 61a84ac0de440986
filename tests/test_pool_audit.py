"""The pool audit (nnunet_ssl.evaluation.pool_audit): per-case scores by hand, labels preprocessed into the
network's geometry exactly as nnU-Net preprocesses a labeled case, and `nnunet_ssl train --pool-labels` end to
end, its Dice checked against nnU-Net's own predictor on the same cases."""
import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import refused
from nnunet_ssl.evaluation.pool_audit import (AUDIT_FILE, AUDIT_PLOT, PoolAudit, PoolAuditError, case_scores,
                                              summarize)

TRAINER = "nnUNetTrainerMeanTeacherLongRamp"  # no other test trains it on fold 1 of Dataset801


def test_case_scores_and_summary_by_hand():
    truth = np.zeros((4, 5), dtype=int)
    truth[:2, :2] = 1  # 4 voxels of label 1
    truth[3, :] = 2  # 5 voxels of label 2
    prediction = np.zeros_like(truth)
    prediction[:2, :1] = 1  # 2 of the 4: Dice 2*2/6, volume 0.5
    prediction[3, :] = 2  # all 5: Dice 1, volume 1
    s = case_scores(prediction, truth, [1, 2])
    assert s["dice"] == pytest.approx((4 / 6 + 1) / 2) and s["volume_ratio"] == pytest.approx(0.75)
    # a label predicted that the truth lacks counts as a label of Dice 0, without a volume ratio
    only_one = np.where(truth == 2, 0, truth)
    s = case_scores(prediction, only_one, [1, 2])
    assert s["dice"] == pytest.approx((4 / 6 + 0) / 2) and s["volume_ratio"] == pytest.approx(0.5)
    assert np.isnan(case_scores(prediction, np.zeros_like(truth), [1, 2])["dice"])  # no truth: no score

    summary = summarize({"a": {"dice": 0.9, "volume_ratio": 1.0}, "b": {"dice": 0.5, "volume_ratio": 0.4},
                         "c": {"dice": 0.85, "volume_ratio": 1.5}, "d": {"dice": float("nan"),
                                                                         "volume_ratio": float("nan")}})
    assert summary["n_cases"] == 3 and summary["dice_mean"] == pytest.approx(0.75)
    assert summary["dice_median"] == pytest.approx(0.85) and summary["failed_cases"] == 1
    assert summary["volume_ratio_median"] == pytest.approx(1.0)
    assert (summary["under_segmented"], summary["over_segmented"]) == (1, 1)


@pytest.mark.parametrize("fixture,configuration,dataset", [("dataset_2d", "2d", "801"),
                                                           ("contract_3d", "3d_fullres", "812")])
def test_labels_are_preprocessed_as_nnunet_preprocesses_a_labeled_case(fixture, configuration, dataset, request):
    """The audit's preprocessing of (image, label) gives what nnU-Net's preprocessing wrote for a training case:
    the same image and the same label map (-1 outside the nonzero mask read as background)."""
    import blosc2
    from nnunetv2.run.run_training import get_trainer_from_args

    raw = request.getfixturevalue(fixture)
    trainer = get_trainer_from_args(dataset, configuration, 0, "nnUNetTrainer", device=torch.device("cpu"))
    audit = PoolAudit.__new__(PoolAudit)  # only its preprocessing, on a labeled case
    audit.trainer = trainer
    ending = trainer.dataset_json["file_ending"]
    data, truth = audit._preprocess([os.path.join(raw, "imagesTr", f"case000_0000{ending}")],
                                    os.path.join(raw, "labelsTr", f"case000{ending}"))
    folder = os.path.join(trainer.preprocessed_dataset_folder_base, trainer.configuration_manager.data_identifier)
    expected_data = blosc2.open(os.path.join(folder, "case000.b2nd"), mode="r")[:]
    expected_seg = np.maximum(blosc2.open(os.path.join(folder, "case000_seg.b2nd"), mode="r")[:][0], 0)
    assert data.shape == expected_data.shape and np.allclose(data, expected_data)
    assert np.array_equal(truth, expected_seg) and truth.max() > 0


def _pool_labels(dataset_2d, folder):
    """A label for each of Dataset801's pool cases but the last (a disc of a different radius each)."""
    os.makedirs(folder)
    cases = sorted(os.path.basename(f)[:-len("_0000.png")] for f in glob.glob(
        os.path.join(dataset_2d, "imagesUnlabeled", "*_0000.png")))
    yy, xx = np.mgrid[:48, :48]
    for i, case in enumerate(cases[:-1]):
        Image.fromarray(((yy - 24) ** 2 + (xx - 24) ** 2 < (6 + 3 * i) ** 2).astype(np.uint8)).save(
            os.path.join(folder, case + ".png"))
    return cases[:-1]


def test_train_with_pool_labels_audits_every_epoch_with_the_inference_weights(dataset_2d, nnunet_env, tmp_path,
                                                                               capsys):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_ssl.commands.cli import main

    labels = str(tmp_path / "pool_labels")
    cases = _pool_labels(dataset_2d, labels)
    empty = tmp_path / "none"
    empty.mkdir()
    err = refused(capsys, ["train", "801", "2d", "1", "-tr", TRAINER, "--epochs", "2", "--iters", "2",
                           "--pool-labels", str(empty), "-device", "cpu"])
    assert str(empty) in err and "no label for any of the 6 unlabeled cases" in err and "case" in err
    assert "not a folder" in refused(capsys, ["train", "801", "2d", "1", "-tr", TRAINER, "--epochs", "2", "--iters",
                                              "2", "--pool-labels", str(tmp_path / "missing"), "-device", "cpu"])
    assert "--pool-audit-cases 0: must be at least 1" in refused(
        capsys, ["train", "801", "2d", "1", "-tr", TRAINER, "--epochs", "2", "--iters", "2", "--pool-labels", labels,
                 "--pool-audit-cases", "0", "-device", "cpu"])

    stats = tmp_path / "stats.json"
    main(["train", "801", "2d", "1", "-tr", TRAINER, "--epochs", "2", "--iters", "2", "--val-iters", "1",
          "--no-val", "--pool-labels", labels, "--stats-json", str(stats), "-device", "cpu", "--overwrite"])
    fold = os.path.join(get_output_folder("801", TRAINER, "nnUNetPlans", "2d"), "fold_1")
    audit = json.load(open(os.path.join(fold, AUDIT_FILE)))
    assert audit["inference_weights"] == "teacher" and [e["epoch"] for e in audit["epochs"]] == [0, 1]
    last = audit["epochs"][-1]
    assert sorted(last["per_case"]) == cases and last["n_cases"] == len(cases)
    assert json.load(open(stats))["pool_audit"] == {k: v for k, v in last.items() if k not in ("epoch", "per_case")}
    assert os.path.getsize(os.path.join(fold, AUDIT_PLOT)) > 5000
    log = open(sorted(glob.glob(os.path.join(fold, "training_log_*.txt")))[-1]).read()
    assert log.count(f"pool audit ({len(cases)} unlabeled cases, teacher weights)") == 2

    # the last epoch's scores are those of nnU-Net's predictor with the final (teacher) weights on the raw images
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(fold), (1,), "checkpoint_final.pth")
    for case in cases:
        seg = predictor.predict_single_npy_array(*predictor.plans_manager.image_reader_writer_class().read_images(
            [os.path.join(dataset_2d, "imagesUnlabeled", case + "_0000.png")]))
        truth = np.asarray(Image.open(os.path.join(labels, case + ".png")))
        expected = case_scores(seg[0], truth, [1, 2])  # the synthetic dataset has two foreground labels
        assert last["per_case"][case] == pytest.approx(expected, abs=1e-6), case


def test_the_audit_skips_the_masked_image_modelling_epochs(monkeypatch):
    """MIRA-U's MIM phase trains no segmentation (and no teacher): its epochs are logged as skipped, not scored."""
    import nnunet_ssl.evaluation.pool_audit as pool_audit

    class Trainer:
        local_rank, reconstructing = 0, True

        def __init__(self):
            self.log, self.ended = [], 0

        def on_train_start(self):
            pass

        def on_epoch_end(self):
            self.ended += 1

        def print_to_log_file(self, *args):
            self.log.append(" ".join(map(str, args)))

    class Audit:
        def __init__(self, trainer, labels_folder, max_cases):
            self.epochs = 0

        def record_epoch(self):
            self.epochs += 1
            return {"epoch": self.epochs}

    monkeypatch.setattr(pool_audit, "PoolAudit", Audit)
    trainer = Trainer()
    state = pool_audit.install_pool_audit(trainer, "labels")
    trainer.on_train_start()
    trainer.on_epoch_end()
    assert state["last"] is None and trainer.ended == 1 and "skipped in the masked-image-modelling" in trainer.log[0]
    trainer.reconstructing = False  # the semi-supervised phase
    trainer.on_epoch_end()
    assert state["last"] == {"epoch": 1} and trainer.ended == 2 and len(trainer.log) == 1
