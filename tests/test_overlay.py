"""`nnunet_ssl overlay`: the contact sheet of test cases, worst first, 2D and 3D."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from nnunet_ssl.commands.cli import main


def test_2d_sheet_orders_the_reference_trainer_worst_first(dataset_2d, tmp_path, capsys):
    labels = os.path.join(dataset_2d, "labelsTs")
    cases = sorted(f[:-4] for f in os.listdir(labels))
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(labels, good)
    shutil.copytree(labels, bad)
    empty = np.zeros_like(np.array(Image.open(os.path.join(labels, cases[0] + ".png"))))
    Image.fromarray(empty).save(bad / f"{cases[0]}.png")  # the first case missed entirely
    out = tmp_path / "sheet.png"
    args = ["overlay", "-i", os.path.join(dataset_2d, "imagesTs"), "-r", labels, "-p", str(bad), str(good),
            "--names", "A", "B", "-djfile", os.path.join(dataset_2d, "dataset.json"), "-o", str(out)]
    main(args)
    assert f"2 cases, worst first by A: {cases[0]}, {cases[1]}" in capsys.readouterr().out
    sheet = np.asarray(Image.open(out).convert("RGB"), dtype=float)
    assert sheet.shape[0] < sheet.shape[1] and sheet.std() > 10  # 2 rows x 4 columns, drawn on
    with pytest.raises(SystemExit) as e:  # an existing sheet is kept
        main(args)
    assert e.value.code == 2


def test_3d_sheet_shows_the_slice_with_the_largest_ground_truth_area(contract_3d, tmp_path):
    from nnunet_ssl.evaluation.overlay import display_slice, write_contact_sheet

    reference = np.zeros((5, 4, 4), dtype=np.uint8)
    reference[1, :2, :2] = 1
    reference[3, :, :3] = 2
    assert display_slice(reference) == 3
    labels = os.path.join(contract_3d, "labelsTs")
    with open(os.path.join(contract_3d, "dataset.json")) as f:
        dataset_json = json.load(f)
    out = tmp_path / "sheet3d.png"
    shown = write_contact_sheet(os.path.join(contract_3d, "imagesTs"), labels, [labels], ["perfect"], dataset_json,
                                str(out))
    assert len(shown) == 1 and out.stat().st_size > 3000


def test_difference_sheet_shows_the_largest_losses_then_the_largest_gains(dataset_2d, tmp_path, capsys):
    from nnunet_ssl.components.pseudo_labels import volume_ratio
    from nnunet_ssl.evaluation.overlay import paired_order

    first = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.8, "e": 0.6}
    last = {"a": 0.7, "b": 0.9, "c": 0.7, "d": 0.7, "e": 0.8}  # a -0.2, b +0.4, c 0, d -0.1, e +0.2
    assert paired_order(first, last, 4) == ["a", "d", "b", "e"]
    assert paired_order(first, last, 3) == ["a", "b", "e"]  # at most 3 // 2 losses, then gains fill the rows
    assert paired_order(first, first, 4) == []
    truth = np.array([[0, 1, 1, 1], [0, 2, 2, 0]])
    assert volume_ratio(np.array([[0, 1, 0, 0], [2, 2, 2, 2]]), truth, [1, 2]) == pytest.approx((1 / 3 + 2) / 2)
    assert np.isnan(volume_ratio(truth, np.zeros_like(truth), [1, 2]))

    labels = os.path.join(dataset_2d, "labelsTs")
    cases = sorted(f[:-4] for f in os.listdir(labels))
    empty = np.zeros_like(np.array(Image.open(os.path.join(labels, cases[0] + ".png"))))
    folders = {}
    for name, missed in (("A", cases[1]), ("B", cases[0])):  # B loses on case 0 and gains on case 1
        folders[name] = tmp_path / name
        shutil.copytree(labels, folders[name])
        Image.fromarray(empty).save(folders[name] / f"{missed}.png")
    out = tmp_path / "paired.png"
    common = ["overlay", "-i", os.path.join(dataset_2d, "imagesTs"), "-r", labels, "--names", "A", "B",
              "-djfile", os.path.join(dataset_2d, "dataset.json"), "--order", "difference"]
    main(common + ["-p", str(folders["A"]), str(folders["B"]), "-o", str(out)])
    assert (f"B's largest losses against A first, then its largest gains: {cases[0]}, {cases[1]}"
            in capsys.readouterr().out)
    assert out.stat().st_size > 3000
    same = tmp_path / "same.png"
    main(common + ["-p", str(folders["A"]), str(folders["A"]), "-o", str(same)])
    assert "not written: every case has the same Dice" in capsys.readouterr().out and not same.exists()


def test_long_trainer_names_are_broken_after_an_underscore_or_a_space():
    from nnunet_ssl.evaluation.overlay import column_title
    assert column_title("nnUNetTrainer") == "nnUNetTrainer"
    assert column_title("nnUNetTrainerSelfTraining_Round0Share75") == "nnUNetTrainerSelfTraining_\nRound0Share75"
    assert column_title("nnUNetTrainer (all 105 labeled)") == "nnUNetTrainer (all 105\nlabeled)"
    assert column_title("x" * 40) == "x" * 40  # nowhere to break: one line
