"""`nnunet_ssl demo` end to end on its --quick path (the default budget is for people, not CI), and the synthetic
task's design: the labeled cases are small and clear, the pool and the test set span small to large and clear to
faint."""
import numpy as np

from conftest import nnunet_ssl_cli, refused


def test_demo_quick_writes_table_overlays_and_report(tmp_path, nnunet_env, capsys):
    out = tmp_path / "demo"
    r = nnunet_ssl_cli("demo", "--out", out, "--quick")
    table = [line for line in r.stdout.splitlines() if line.startswith("| nnUNetTrainer")]
    assert len(table) == 2 and table[1].startswith("| nnUNetTrainerSGRS |")
    for row in table:
        mean_dice = float(row.split("|")[2])
        assert 0.0 <= mean_dice <= 1.0
    assert "nnUNetTrainerSGRS - nnUNetTrainer:" in r.stdout  # the paired difference
    assert f"Everything is in {out}" in r.stdout
    assert len(list((out / "predictions" / "nnUNetTrainerSGRS").glob("*.png"))) == 3
    assert (out / "demo_results.md").read_text(encoding="utf-8").count("| nnUNetTrainer") == 2
    assert (out / "results" / "overlays.png").stat().st_size > 1000
    report = (out / "results" / "report.html").read_text(encoding="utf-8")
    assert "nnUNetTrainerSGRS" in report and report.count("data:image/png;base64,") >= 3  # overlays, Dice, curves
    assert "nnunet_ssl demo" in report and "--quick" in report  # the command that made it

    # a second demo into the same folder keeps the first one's models and results
    err = refused(capsys, ["demo", "--out", out, "--quick"])
    assert "holds an earlier demo" in err and "--overwrite" in err


def _lesion_contrast(image, seg):
    grey = image.astype(float).mean(-1)
    return grey[seg == 0].mean() - grey[seg > 0].mean()


def test_labeled_cases_are_small_and_clear_and_the_test_set_spans_large_and_faint_ones(tmp_path):
    from PIL import Image

    from nnunet_ssl.commands.demo import TASK
    from nnunet_ssl.data.synthetic import make_case_2d, write_synthetic_dataset

    rng = np.random.default_rng(0)
    clear = [_lesion_contrast(*make_case_2d(rng, 64, 0.0)) for _ in range(8)]
    faint = [_lesion_contrast(*make_case_2d(rng, 64, 1.0)) for _ in range(8)]
    assert min(clear) > 2 * max(faint) > 0  # faint lesions are darker than skin, but much less
    small = [(make_case_2d(rng, 64, 0.0, 0.1)[1] > 0).sum() for _ in range(8)]
    large = [(make_case_2d(rng, 64, 0.0, 0.45)[1] > 0).sum() for _ in range(8)]
    assert min(large) > 10 * max(small)

    folder = write_synthetic_dataset(str(tmp_path), 991, dim=2, n_labeled=4, n_unlabeled=2, n_test=12, **TASK)
    def cases(sub):
        images = sorted((tmp_path / folder / f"images{sub}").glob("*.png"))
        return [(np.asarray(Image.open(i)), np.asarray(Image.open(str(i).replace(f"images{sub}", f"labels{sub}")
                                                                  .replace("_0000.png", ".png")))) for i in images]
    labeled, test = cases("Tr"), cases("Ts")
    # the test set holds fainter and larger lesions than any labeled one
    assert min(_lesion_contrast(*c) for c in labeled) > np.percentile([_lesion_contrast(*c) for c in test], 25)
    assert max((seg > 0).sum() for _, seg in labeled) < np.percentile([(seg > 0).sum() for _, seg in test], 50)


def test_even_spread_draws_every_case_group_once_from_each_nth_of_its_ranges(tmp_path, monkeypatch):
    import nnunet_ssl.data.synthetic as synthetic

    def drawn(even_spread):
        made = []
        make = synthetic.make_case_2d
        monkeypatch.setattr(synthetic, "make_case_2d", lambda rng, size, faintness, lesion_size: (
            made.append((faintness, lesion_size)), make(rng, size, faintness, lesion_size))[1])
        synthetic.write_synthetic_dataset(str(tmp_path / str(even_spread)), 992, n_labeled=4, n_unlabeled=3,
                                          n_test=20, size=16, labeled_faintness=(0.0, 0.2), faintness=(0.0, 1.0),
                                          labeled_lesion_size=(0.1, 0.2), lesion_size=(0.1, 0.45),
                                          even_spread=even_spread)
        return np.array(made)  # in the order written: labeled, test, unlabeled

    def bins(values, low, high):
        return sorted(np.floor((values - low) / (high - low) * len(values)).astype(int).tolist())

    made = drawn(True)
    labeled, test, pool = made[:4], made[4:24], made[24:]
    assert bins(labeled[:, 0], 0.0, 0.2) == bins(labeled[:, 1], 0.1, 0.2) == [0, 1, 2, 3]
    assert bins(test[:, 0], 0.0, 1.0) == bins(test[:, 1], 0.1, 0.45) == list(range(20))
    assert bins(pool[:, 0], 0.0, 1.0) == bins(pool[:, 1], 0.1, 0.45) == [0, 1, 2]
    # independent draws: some twentieth of the range gets two test cases and another none
    independent = drawn(False)[4:24]
    assert bins(independent[:, 1], 0.1, 0.45) != list(range(20))
