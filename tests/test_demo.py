"""`nnunet_ssl demo` end to end with a tiny budget (the default budget is for people, not CI)."""

from conftest import nnunet_ssl_cli


def test_demo_runs_and_prints_the_comparison_table(tmp_path, nnunet_env):
    out = tmp_path / "demo"
    r = nnunet_ssl_cli("demo", "--out", out, "--epochs", "1", "--iters", "2")
    table = [line for line in r.stdout.splitlines() if line.startswith("| nnUNetTrainer")]
    assert len(table) == 2 and table[1].startswith("| nnUNetTrainerMeanTeacher |")
    for row in table:
        mean_dice = float(row.split("|")[2])
        assert 0.0 <= mean_dice <= 1.0
    assert f"Everything is in {out}" in r.stdout
    assert len(list((out / "predictions" / "nnUNetTrainerMeanTeacher").glob("*.png"))) == 10
    assert (out / "demo_results.md").read_text().count("| nnUNetTrainer") == 2

    # a second demo into the same folder keeps the first one's models and results
    r = nnunet_ssl_cli("demo", "--out", out, "--epochs", "1", "--iters", "2", check=False)
    assert r.returncode == 2 and "holds an earlier demo" in r.stderr and "--overwrite" in r.stderr
