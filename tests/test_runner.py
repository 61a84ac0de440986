"""run_logged: a pipeline's stock commands with their output in a log, and a training's epochs as a progress bar."""
import sys

import pytest

from nnunet_ssl.utilities.runner import run_logged

# prints what nnU-Net's trainer prints around its epochs, a resumed run starting at epoch 2
FAKE_TRAINING = ("print('Using device: cpu')\n"
                 "for epoch in range(2, 5):\n"
                 "    print(f'2026-12-02 03:22:41.626644: Epoch {epoch}')\n"
                 "    print(f'2026-12-02 03:22:46.805831: Epoch time: 0.1 s')\n")


def test_a_training_shows_its_epochs_and_its_whole_output_reaches_the_log(tmp_path, capsys):
    log = tmp_path / "logs" / "train.log"
    _, seconds = run_logged([sys.executable, "-c", FAKE_TRAINING], str(log), {}, epochs=5,
                            progress="training X")
    assert seconds > 0
    text = log.read_text(encoding="utf-8")
    assert text.startswith("$ ") and "Using device: cpu" in text
    assert [line.split(": ")[-1] for line in text.splitlines() if line.startswith("2026-") and "time" not in line] \
        == ["Epoch 2", "Epoch 3", "Epoch 4"]
    bar = capsys.readouterr().err
    assert "training X" in bar and "2/5" in bar and "4/5" in bar and "5/5" in bar  # resumed at 2, ended at 5
    assert "Epoch 2" not in bar  # the training's own output goes to the log only


def test_a_failing_training_names_the_command_and_its_log(tmp_path, capsys):
    log = tmp_path / "train.log"
    with pytest.raises(RuntimeError, match=r"exit 3.*\n.*see .*train\.log"):
        run_logged([sys.executable, "-c", "print('x: Epoch 0'); print('x: Epoch 1'); raise SystemExit(3)"], str(log),
                   {}, epochs=3, progress="training Y")
    assert "x: Epoch 1" in log.read_text(encoding="utf-8")
    bar = capsys.readouterr().err
    assert "1/3" in bar and "3/3" not in bar  # the bar stays where the training stopped
