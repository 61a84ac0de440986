"""Metrics against hand-computed values, the leaderboard on a fake results folder."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import nnunet_ssl_cli
from nnunet_ssl.evaluation.metrics import binary_metrics


def _square(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[..., rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


# A 10x10 square against itself shifted by 2 along the last axis. Worked by hand: of each square's 36 edge
# pixels, 16 lie on the other edge, the rest at distances (unit spacing) 1,1,2,2,2,2,2,2,2,2,2,2 (left side), 2 x 8
# (right side) and 1, 2 twice on the top/bottom rows: sum 36, so ASSD = 1 and the 95th percentile is 2.
# NSD at 1 mm: 20 of 36 edge pixels per side lie within 1 -> 40 / 72.
def test_shifted_square_isotropic():
    ref = _square((40, 40), (10, 20), (10, 20))
    pred = _square((40, 40), (10, 20), (12, 22))
    m = binary_metrics(pred, ref, (1.0, 1.0), nsd_tolerance_mm=1.0)
    assert m["Dice"] == pytest.approx(0.8) and m["Jaccard"] == pytest.approx(2 / 3)
    assert m["HD95_vox"] == pytest.approx(2.0) and m["HD95_mm"] == pytest.approx(2.0)
    assert m["ASSD_vox"] == pytest.approx(1.0) and m["ASSD_mm"] == pytest.approx(1.0)
    assert m["NSD"] == pytest.approx(40 / 72, abs=1e-6)


# Same masks, spacing 2 mm along the shifted axis. By hand (mm): top/bottom rows 0 x 8, 2, 4 (twice); left side
# rows 11..18: min(r - 10, 19 - r, 4) = 1,2,3,4,4,3,2,1; right side 4 x 8. Sum 64 over 36 pixels per direction.
def test_shifted_square_anisotropic_spacing_and_nnunet_2d_layout():
    ref = _square((1, 40, 40), (10, 20), (10, 20))  # nnU-Net reads 2D as 1 x H x W with a dummy spacing
    pred = _square((1, 40, 40), (10, 20), (12, 22))
    m = binary_metrics(pred, ref, (999.0, 1.0, 2.0))
    assert m["ASSD_mm"] == pytest.approx(64 / 36, rel=1e-5) and m["HD95_mm"] == pytest.approx(4.0)
    assert m["ASSD_vox"] == pytest.approx(1.0) and m["HD95_vox"] == pytest.approx(2.0)


def test_shifted_cube_3d():
    ref = np.zeros((30, 30, 30), bool)
    ref[5:15, 5:15, 5:15] = True
    pred = np.roll(ref, 2, axis=0)
    m = binary_metrics(pred, ref, (3.0, 1.0, 1.0))
    assert m["Dice"] == pytest.approx(0.8) and m["HD95_vox"] == pytest.approx(2.0)
    assert m["HD95_mm"] == pytest.approx(6.0)  # the 2-voxel shift runs along the 3 mm axis
    identical = binary_metrics(ref, ref, (3.0, 1.0, 1.0))
    assert identical["Dice"] == 1 and identical["HD95_mm"] == 0 and identical["ASSD_mm"] == 0 and identical["NSD"] == 1


def test_empty_masks_have_defined_values():
    empty, square = np.zeros((40, 40), bool), _square((40, 40), (10, 20), (10, 20))
    both = binary_metrics(empty, empty, (1.0, 2.0))
    assert (both["Dice"], both["Jaccard"], both["NSD"], both["HD95_mm"], both["ASSD_vox"]) == (1, 1, 1, 0, 0)
    for pred, ref in ((empty, square), (square, empty)):
        m = binary_metrics(pred, ref, (1.0, 2.0))
        assert (m["Dice"], m["Jaccard"], m["NSD"]) == (0, 0, 0)
        assert m["HD95_mm"] == pytest.approx(np.hypot(40, 80)) and m["HD95_vox"] == pytest.approx(np.hypot(40, 40))
        assert all(np.isfinite(v) for v in m.values())


# ---------------------------------------------------------------------- leaderboard on a fake results tree
def _png(path, mask):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def test_leaderboard_on_fake_results(tmp_path):
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    ds = "Dataset905_Fake"
    ref = _square((40, 40), (10, 20), (10, 20))
    shifted = _square((40, 40), (10, 20), (12, 22))
    dj = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "lesion": 1},
          "numTraining": 4, "file_ending": ".png"}
    os.makedirs(raw / ds)
    (raw / ds / "dataset.json").write_text(json.dumps(dj))
    rgb = np.zeros((40, 40, 3), np.uint8)
    for i in range(4):
        _png(str(raw / ds / "imagesTr" / f"c{i}_0000.png"), rgb)
        _png(str(raw / ds / "labelsTr" / f"c{i}.png"), ref)
        _png(str(pre / ds / "gt_segmentations" / f"c{i}.png"), ref)
    for i in range(3):
        _png(str(raw / ds / "imagesUnlabeled" / f"u{i}_0000.png"), rgb)
    for i in range(2):
        _png(str(raw / ds / "labelsTs" / f"t{i}.png"), ref)
    (pre / ds / "splits_final.json").write_text(json.dumps(
        [{"train": ["c2", "c3"], "val": ["c0", "c1"]}, {"train": ["c0", "c1"], "val": ["c2", "c3"]}]))
    model = res / ds / "TrainerA__nnUNetPlans__2d"
    # fold 0 finished: c0 perfect (Dice 1), c1 shifted (Dice 0.8); fold 1 never ran
    _png(str(model / "fold_0" / "validation" / "c0.png"), ref)
    _png(str(model / "fold_0" / "validation" / "c1.png"), shifted)
    (model / "fold_0" / "validation" / "summary.json").write_text("{}")
    # test set: one perfect, one empty prediction (Dice 0: a failed case)
    _png(str(model / "test_predictions_fold_all" / "t0.png"), ref)
    _png(str(model / "test_predictions_fold_all" / "t1.png"), np.zeros_like(ref))
    # an ASCII terminal: the printed table's "±" is escaped, not a UnicodeEncodeError after the work is done
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "PYTHONIOENCODING": "ascii"}
    out = tmp_path / "board"
    r = nnunet_ssl_cli("leaderboard", "-d", "905", "-c", "2d", "-tr", "TrainerA", "TrainerB", "-o", out, "-np", "1",
                       env=env)
    rows = {(row["trainer"], row["evaluation"]): row for row in csv.DictReader(open(out / "leaderboard.csv", encoding="utf-8"))}
    cv = rows[("TrainerA", "cross-validation")]
    assert float(cv["Dice_mean"]) == pytest.approx(0.9) and cv["folds"] == "0" and cv["folds_missing"] == "1"
    assert float(cv["HD95_vox_mean"]) == pytest.approx(1.0)  # (0 + 2) / 2
    assert (cv["n_labeled"], cv["n_unlabeled"], cv["n_cases"], cv["failed_cases"]) == ("4", "3", "2", "0")
    test = rows[("TrainerA", "test (fold all)")]
    assert float(test["Dice_mean"]) == pytest.approx(0.5) and test["failed_cases"] == "1"
    # predicted / true volume: t0 1, t1 0 (nothing predicted: under-segmented); the shifted square keeps its size
    assert float(test["volume_ratio_median"]) == pytest.approx(0.5)
    assert (test["under_segmented"], test["over_segmented"]) == ("1", "0")
    assert float(cv["volume_ratio_median"]) == pytest.approx(1.0) and cv["under_segmented"] == "0"
    assert float(test["HD95_vox_mean"]) == pytest.approx(np.hypot(40, 40) / 2)
    assert rows[("TrainerB", "missing")]["folds_missing"].startswith("all")
    assert "\\xb1" in r.stdout and "missing folds 1" in r.stdout
    assert (out / "dice_per_case.png").stat().st_size > 1000
    report = (out / "report.html").read_text(encoding="utf-8")  # TrainerB has no results: no paired statistics
    assert "<td>TrainerA</td>" in report and "data:image/png;base64," in report and "Paired" not in report
    assert "fold_all" not in cv["folds"]  # fold all has no held-out cases: never cross-validation
    summary = json.loads((out / "summaries" / ds / model.name / "test_predictions_fold_all" /
                          "summary_ssl.json").read_text(encoding="utf-8"))
    assert list(summary["per_label"]) == ["1"] and list(summary["per_case"][1]["metrics"]) == ["1"]


# the benchmark runner end to end (killed, resumed): tests/test_safety_evaluation.py
