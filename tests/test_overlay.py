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
