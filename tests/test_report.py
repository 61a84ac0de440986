"""report.html from fake results (no training): the HTML itself, then a real headless browser's screenshot."""
import base64
import html.parser
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from nnunet_ssl.evaluation.leaderboard import make_row, write_leaderboard
from nnunet_ssl.evaluation.metrics import METRICS, summarize

MAGENTA = (255, 0, 255)  # a colour nothing else on the page has: where it shows, the embedded picture was drawn
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}


def _summary(dice):
    per_case = [{"reference_file": f"/raw/labelsTs/case{i:02d}.png", "prediction_file": f"/pred/case{i:02d}.png",
                 "spacing": [1.0, 1.0], "metrics": {"1": {m: (d if m in ("Dice", "Jaccard", "NSD") else 1 - d)
                                                          for m in METRICS}}}
                for i, d in enumerate(dice)]
    return {"n_cases": len(dice), **summarize(per_case), "per_case": per_case}


def _png(path, size, colour, stripe=None):
    image = Image.new("RGB", size, colour)
    if stripe:
        image.paste(stripe, (0, 0, size[0], size[1] // 3))
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A benchmark-like report: two trainers on 12 test cases, an overlay sheet, training curves, commands."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    baseline = np.clip(rng.normal(0.85, 0.08, 12), 0, 1)
    better = np.clip(baseline + 0.04 + rng.normal(0, 0.01, 12), 0, 1)
    info = dict(dataset="Dataset999_Fake", n_labeled=4, n_unlabeled=20, evaluation="test (fold all)", folds="all",
                folds_missing="", s_per_iter=0.5, peak_rss_gb=1.5)
    fold = tmp / "nnUNetTrainerSGRS__nnUNetPlans__2d" / "fold_all"
    fold.mkdir(parents=True)
    _png(fold / "progress.png", (3000, 1200), (255, 255, 255), stripe=(30, 90, 200))  # wider: scaled down
    _png(fold / "progress_ssl.png", (900, 600), (250, 250, 250), stripe=(40, 160, 60))
    rows = [make_row(_summary(baseline), trainer="nnUNetTrainer", **info),
            make_row(_summary(better), trainer="nnUNetTrainerSGRS", model_folder=str(fold.parent), **info)]
    overlays = _png(tmp / "overlays.png", (800, 500), MAGENTA)
    out = tmp / "out"
    files = write_leaderboard(rows, str(out), "Benchmark <fake> & co", figures={"Overlays": overlays},
                              commands=[["nnunet_ssl", "benchmark", "-tr", "nnUNetTrainer", "nnUNetTrainerSGRS"],
                                        "echo '<script>alert(1)</script>'"])
    return {"files": files, "rows": rows, "baseline": baseline, "better": better, "tmp": tmp,
            "html": open(files["report"], encoding="utf-8").read()}


class _Checker(html.parser.HTMLParser):
    """Tags balanced, and every resource the page would load."""

    def __init__(self):
        super().__init__()
        self.stack, self.resources, self.text, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.resources.append((tag, key, attrs[key]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_one_self_contained_page_with_the_results(report):
    page = report["html"]
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [], f"unclosed: {checker.stack}"
    text = " ".join(checker.text)
    # the table and the statistics, computed from the fake cases here
    assert f"{report['baseline'].mean():.4f}" in text and f"{report['better'].mean():.4f}" in text
    difference = 100 * (report["better"] - report["baseline"]).mean()
    assert f"{difference:+.2f}" in text and "Paired differences to nnUNetTrainer" in text
    # nothing from elsewhere: no scripts, stylesheets, fonts; links only to the page's own sections
    assert "script" not in checker.tags and "link" not in checker.tags and not re.search(r"@import|url\(", page)
    assert not re.search(r"https?://", page)
    images = [v for tag, key, v in checker.resources if tag == "img"]
    hrefs = [v for tag, key, v in checker.resources if key == "href"]
    assert all(h.startswith("#") for h in hrefs) and len(hrefs) >= 5
    # Dice per case, the paired differences' forest plot, overlays, progress.png and progress_ssl.png: all
    # embedded PNGs
    assert len(images) == 5 and all(v.startswith("data:image/png;base64,") for v in images)
    pictures = [Image.open(io.BytesIO(base64.b64decode(v.split(",", 1)[1]))) for v in images]
    assert max(p.width for p in pictures) <= 1600  # nnU-Net's 3000 px progress.png is scaled down
    assert (255, 0, 255) in [p.convert("RGB").getpixel((10, 10)) for p in pictures]  # the overlay sheet
    # text is escaped: the title and a command with markup are shown, never run
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Benchmark &lt;fake&gt; &amp; co" in page
    assert "nnunet_ssl benchmark -tr nnUNetTrainer nnUNetTrainerSGRS" in text
    for package in ("python", "torch", "nnunetv2", "nnunet_ssl"):
        assert f"<td>{package}</td>" in page


def test_the_leaderboard_files_hold_the_paired_statistics(report):
    import csv
    import json

    files = report["files"]
    stats = json.load(open(files["paired_json"]))
    assert [(s["trainer"], s["reference"], s["n_cases"]) for s in stats] == [("nnUNetTrainerSGRS", "nnUNetTrainer", 12)]
    assert stats[0]["mean_difference"] == pytest.approx((report["better"] - report["baseline"]).mean())
    assert stats[0]["ci_low"] > 0 and stats[0]["wilcoxon_p"] < 0.01  # a consistent gain of 4 points
    assert [r["trainer"] for r in csv.DictReader(open(files["paired_csv"], encoding="utf-8"))] == ["nnUNetTrainerSGRS"]
    assert "## Paired differences" in open(files["markdown"], encoding="utf-8").read()


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_browser() is None, reason="no chromium (or chrome) binary to render report.html: "
                                               "apt-get install chromium to run this test")
def test_report_renders_in_a_headless_browser(report, tmp_path):
    shot = tmp_path / "report.png"
    result = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             "--no-first-run", "--disable-extensions", "--disable-dev-shm-usage",
                             f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
                             "file://" + os.path.abspath(report["files"]["report"])],
                            capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not a blank page
    dark = (pixels.sum(axis=2) < 200).mean()  # text and table lines
    assert dark > 0.002
    magenta = (np.abs(pixels - np.array(MAGENTA)).sum(axis=2) < 30)
    assert magenta.sum() > 200 * 100, "the embedded overlay picture is not drawn"  # it is 800 x 500 (or scaled)
    if os.environ.get("NNUNET_SSL_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["NNUNET_SSL_KEEP_SCREENSHOT"])
