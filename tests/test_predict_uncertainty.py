"""`nnunet_ssl predict-uncertainty`: the numbers on hand-made probabilities, the tile predictions (MC dropout on
only during its batched passes; the mean over flips and folds), and the real CLI on a stock nnUNetTrainer model
and on a model with dropout (UAMT's ASPP head) of the tiny 2D dataset."""
import csv
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import refused
from nnunet_ssl.commands.cli import main
from nnunet_ssl.evaluation.uncertainty_maps import (MAP_UNITS, _predictor_class, case_statistics, csv_text,
                                                    encode_map, mean_prediction, probabilities_and_entropy, ranked,
                                                    stochastic_source)

LN2 = math.log(2)


# ---------------------------------------------------------------------- numbers
def test_entropy_of_the_mean_and_mutual_information():
    certain_a = torch.tensor([1.0, 0.0]).view(1, 2, 1)
    certain_b = torch.tensor([0.0, 1.0]).view(1, 2, 1)
    mean, total, mi = mean_prediction(torch.cat([certain_a, certain_b]))  # two confident, disagreeing predictions
    assert torch.allclose(mean[:, 0], torch.tensor([0.5, 0.5]))
    assert total.item() == pytest.approx(LN2) and mi.item() == pytest.approx(LN2)  # all of it disagreement
    same = torch.tensor([0.5, 0.5]).view(1, 2, 1).repeat(3, 1, 1)
    _, total, mi = mean_prediction(same)  # agreeing, each uncertain: no mutual information
    assert total.item() == pytest.approx(LN2) and mi.item() == pytest.approx(0.0, abs=1e-7)

    logits = torch.tensor([[[0.0], [0.0], [math.log(2.0)]]])  # softmax (1/4, 1/4, 1/2)
    out = probabilities_and_entropy(logits)
    assert torch.allclose(out[0, :3, 0], torch.tensor([0.25, 0.25, 0.5]))
    assert out[0, 3, 0].item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.5)))


def test_csv_numbers_on_a_known_map():
    seg = np.array([[[0, 1, 2], [0, 0, 0]]])  # one slice: a 2D image, 2 foreground pixels
    unc = np.array([[[0.5, 0.1, 0.6], [0.0, 0.4, 0.0]]])
    mi = np.array([[[0.0, 0.05, 0.1], [0.0, 0.0, 0.0]]])
    row = case_statistics(seg, unc, mi, spacing=(999.0, 0.5, 2.0), threshold_nats=0.4)
    assert row["mean_uncertainty_foreground"] == pytest.approx(0.35)
    assert row["mean_uncertainty_image"] == pytest.approx(1.6 / 6)
    assert row["uncertain_voxels"] == 3 and row["uncertain_fraction_image"] == pytest.approx(0.5)  # >= 0.4
    assert row["uncertain_fraction_foreground"] == pytest.approx(0.5)
    assert row["foreground_voxels"] == 2 and row["foreground_volume"] == pytest.approx(2.0)  # 2 x 0.5 x 2 mm^2
    assert row["volume_unit"] == "mm^2" and row["mean_mutual_information_foreground"] == pytest.approx(0.075)
    volume = case_statistics(np.ones((2, 1, 1), int), np.zeros((2, 1, 1)), None, (2.0, 1.0, 3.0), 0.4)
    assert volume["foreground_volume"] == pytest.approx(12.0) and volume["volume_unit"] == "mm^3"
    assert volume["mean_mutual_information_foreground"] is None

    empty = {**case_statistics(np.zeros_like(seg), unc, None, (999.0, 1, 1), 0.4), "case": "empty"}
    calm = {**row, "case": "calm", "mean_uncertainty_foreground": 0.2}
    rows = ranked([calm, empty, {**row, "case": "doubtful"}])
    assert [(r["rank"], r["case"]) for r in rows] == [(1, "doubtful"), (2, "calm"), (3, "empty")]  # no fg: last
    read = list(csv.DictReader(csv_text(rows).splitlines()))
    assert read[0]["case"] == "doubtful" and float(read[0]["mean_uncertainty_foreground"]) == pytest.approx(0.35)
    assert read[2]["mean_uncertainty_foreground"] == ""
    assert encode_map(np.array([0.0, LN2 / 2, LN2, 5.0]), 2).tolist() == [0, 32768, MAP_UNITS, MAP_UNITS]
    assert [stochastic_source(True, True, 1), stochastic_source(False, True, 3), stochastic_source(False, False, 2),
            stochastic_source(False, False, 1)] == ["mc_dropout", "mirroring+folds", "folds", "softmax"]


# ---------------------------------------------------------------------- tile predictions
def _predictor(network, mirror_axes=None, passes=8, parameters=None):
    """An UncertaintyPredictor around a hand-made 2D network: one 8x8 tile covers the image."""
    predictor = _predictor_class()(use_mirroring=mirror_axes is not None, device=torch.device("cpu"),
                                   allow_tqdm=False)
    predictor.network, predictor.allowed_mirroring_axes, predictor.passes = network, mirror_axes, passes
    predictor.list_of_parameters = parameters or [network.state_dict()]
    predictor.configuration_manager = SimpleNamespace(patch_size=[8, 8])
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=2)
    return predictor


def test_mean_over_flips_and_folds_is_of_probabilities():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.manual_seed(0)
    network = nn.Conv2d(1, 2, 3, padding=1).eval()  # not flip-equivariant: the four flips differ
    x = torch.randn(1, 1, 8, 8)
    predictor = _predictor(network, mirror_axes=(0, 1))
    assert predictor.predictions_per_voxel() == 4
    flips = [(), (2,), (3,), (2, 3)]
    with torch.no_grad():
        each = torch.cat([probabilities_and_entropy(network(x.flip(f)).flip(f) if f else network(x)) for f in flips])
    out = predictor._internal_maybe_mirror_and_predict(x)
    assert out.shape == (1, 5, 8, 8)  # nnU-Net's logits (C), then mean probabilities (C) and expected entropy
    assert torch.equal(out[:, :2], nnUNetPredictor._internal_maybe_mirror_and_predict(predictor, x))
    assert torch.allclose(out[0, 2:], each.mean(0), atol=1e-6)

    other = nn.Conv2d(1, 2, 3, padding=1)
    folds = _predictor(network, parameters=[network.state_dict(), other.state_dict()])
    folds.use_gaussian = False  # (nnU-Net's Gaussian is ~1e-6 at an 8x8 tile's corners: fp16 subnormals)
    with torch.no_grad():
        expected = (probabilities_and_entropy(network(x)) + probabilities_and_entropy(other(x)))[0] / 2
        logits = (network(x) + other(x))[0] / 2
    # through nnU-Net's sliding window (2D: (C, 1, Y, X)) and its fold loop
    out = folds.predict_logits_from_preprocessed_data(x[0][:, None])
    assert out.shape == (5, 1, 8, 8) and torch.allclose(out[2:, 0].float(), expected, atol=2e-3)  # fp16 buffer
    assert torch.allclose(out[:2, 0].float(), logits, atol=2e-3)
    assert folds.label_manager.num_segmentation_heads == 2  # the extra channels only during the prediction


def test_mc_dropout_passes_batched_dropout_only_then_eval():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.Conv2d(4, 2, 1),
                            nn.InstanceNorm2d(2, track_running_stats=True))
    network.eval()
    batches, modes = [], []
    network.register_forward_hook(lambda m, inputs, out: batches.append(inputs[0].shape[0]))
    network[1].register_forward_hook(lambda m, i, o: modes.append((m.training, network[0].training,
                                                                   network[3].training)))
    predictor = _predictor(network, mirror_axes=(0, 1), passes=8)
    assert predictor.has_dropout and predictor.predictions_per_voxel() == 8
    x = torch.randn(1, 1, 8, 8)
    out = predictor._internal_maybe_mirror_and_predict(x)
    # nnU-Net's 4 mirrored forwards in eval mode (the segmentation), then one forward of the 8 passes: dropout alone on
    assert batches == [1, 1, 1, 1, 8]
    assert modes == [(False, False, False)] * 4 + [(True, False, False)]
    assert out.shape == (1, 5, 8, 8)
    with torch.no_grad():
        deterministic = network(x)
    _, total, _ = mean_prediction(out[0, 2:4][None])
    assert (out[0, 4] < total - 1e-4).any()  # expected entropy below H(mean): the passes differ
    assert not any(m.training for m in network.modules())  # back in eval mode
    with torch.no_grad():
        assert torch.equal(network(x), deterministic)  # deterministic again
    out_again = predictor._internal_maybe_mirror_and_predict(x)
    assert torch.equal(out_again[:, :2], out[:, :2]) and not torch.equal(out_again[:, 2:], out[:, 2:])
    assert predictor.pass_variance > 0

    class UnusedDropout(nn.Module):  # dropout in a part the output does not depend on (UAMT's "teacher_main")
        def __init__(self):
            super().__init__()
            self.conv, self.unused = nn.Conv2d(1, 2, 1), nn.Dropout(0.5)

        def forward(self, x):
            return self.conv(x)

    idle = _predictor(UnusedDropout().eval(), passes=4)
    idle._internal_maybe_mirror_and_predict(x)
    assert idle.has_dropout and idle.pass_variance == 0  # -> predict_uncertainty warns


# ---------------------------------------------------------------------- the real CLI
def _read(path):
    from PIL import Image
    return np.array(Image.open(path))


def test_cli_stock_model_and_dropout_model(dataset_2d, nnunet_env, tmp_path, monkeypatch, capsys):
    from nnunetv2.run.run_training import get_trainer_from_args

    results = tmp_path / "results"
    monkeypatch.setenv("nnUNet_results", str(results))
    images = os.path.join(dataset_2d, "imagesTs")
    main(["train", "801", "2d", "0", "-tr", "nnUNetTrainer", "--epochs", "2", "--iters", "3", "--val-iters", "1",
          "--no-val", "-device", "cpu"])
    out = tmp_path / "stock"
    capsys.readouterr()
    main(["predict-uncertainty", "-i", images, "-o", str(out), "-d", "801", "-c", "2d", "-f", "0", "-device", "cpu"])
    printed = capsys.readouterr()
    assert "(mirroring:" in printed.out and "uncertainty maps" in printed.err  # the source; tqdm's bar
    rows = list(csv.DictReader(open(out / "uncertainty.csv")))
    assert sorted(r["case"] for r in rows) == ["test000", "test001"] and [r["rank"] for r in rows] == ["1", "2"]
    assert {r["source"] for r in rows} == {"mirroring"} and {r["predictions"] for r in rows} == {"4"}
    ln3 = math.log(3)
    for row in rows:
        seg, encoded = _read(out / f"{row['case']}.png"), _read(out / f"{row['case']}_uncertainty.png")
        assert seg.shape == encoded.shape == (48, 48) and set(np.unique(seg)) <= {0, 1, 2}
        nats = encoded.astype(np.float64) * float(row["map_nats_per_unit"])
        assert float(row["map_nats_per_unit"]) == pytest.approx(ln3 / MAP_UNITS, rel=1e-5)
        assert nats.mean() == pytest.approx(float(row["mean_uncertainty_image"]), abs=1e-4)
        assert int(row["foreground_voxels"]) == int((seg > 0).sum()) == float(row["foreground_volume"])
        assert float(row["threshold_nats"]) == pytest.approx(0.5 * ln3, rel=1e-5)
        assert int(row["uncertain_voxels"]) == pytest.approx((nats >= 0.5 * ln3).sum(), abs=2)  # 16-bit rounding
    assert _read(out / "uncertainty_overview.png").ndim == 3
    # the segmentation is nnUNetv2_predict's (its predictor, in process: the sequential variant)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    stock = tmp_path / "nnunet"
    stock.mkdir()
    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(results / "Dataset801_T2D" / "nnUNetTrainer__nnUNetPlans__2d"),
                                                   ("0",))
    predictor.predict_from_files_sequential(images, str(stock))
    for row in rows:
        assert np.array_equal(_read(stock / f"{row['case']}.png"), _read(out / f"{row['case']}.png"))

    # a second run into the same folder is refused; bad input names the file and the problem
    argv = ["predict-uncertainty", "-i", images, "-o", str(out), "-d", "801", "-c", "2d", "-f", "0", "-device", "cpu"]
    assert "already holds" in refused(capsys, argv) and "--overwrite" in refused(capsys, argv)
    assert "fold_1" in refused(capsys, argv[:-4] + ["-f", "1", "-device", "cpu"])
    assert "does not exist" in refused(capsys, ["predict-uncertainty", "-i", images, "-o", str(tmp_path / "x"),
                                       "-m", str(tmp_path / "nowhere")])
    bad = tmp_path / "bad"
    bad.mkdir()
    assert "no images ending in .png" in refused(capsys, argv[:2] + [str(bad)] + argv[3:])
    os.link(os.path.join(images, "test000_0000.png"), bad / "test000_0001.png")
    os.link(os.path.join(images, "test001_0000.png"), bad / "test001_0000.png")
    os.link(os.path.join(images, "test001_0000.png"), bad / "test001_0001.png")
    assert "test000 has channels _0001" in refused(capsys, argv[:2] + [str(bad)] + argv[3:])

    # a network with dropout (UAMT's ASPP head; untrained weights do): MC dropout, mutual information maps
    trainer = get_trainer_from_args("801", "2d", "0", "nnUNetTrainerUAMT", "nnUNetPlans", device=torch.device("cpu"))
    trainer.initialize()
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    from batchgenerators.utilities.file_and_folder_operations import save_json
    save_json(trainer.plans_manager.plans, os.path.join(trainer.output_folder_base, "plans.json"))
    save_json(trainer.dataset_json, os.path.join(trainer.output_folder_base, "dataset.json"))
    mc = tmp_path / "mc"
    main(["predict-uncertainty", "-i", images, "-o", str(mc), "-m", trainer.output_folder_base, "-device", "cpu",
          "--passes", "3", "--mutual-information", "--overview-cases", "1", "--disable_tta"])
    rows = list(csv.DictReader(open(mc / "uncertainty.csv")))
    assert {r["source"] for r in rows} == {"mc_dropout"} and {r["predictions"] for r in rows} == {"3"}
    assert all(_read(mc / f"{r['case']}_mutual_information.png").max() > 0 for r in rows)
    assert "mc_dropout" in capsys.readouterr().out
