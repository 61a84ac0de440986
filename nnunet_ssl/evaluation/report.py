"""report.html: one self-contained results page (the benchmark's, the leaderboard's, the demo's).

The table, the paired statistics, the figures (per-case Dice, overlays, ...), each model's training curves
(nnU-Net's progress.png, nnunet_ssl's progress_ssl.png and, with --pool-labels, pool_audit.png), the commands and
the software versions, in one file: pictures are embedded as data: URIs, the style is inline; the page loads
nothing (no scripts, fonts or links to other sites), so it can be mailed, archived or opened offline. All text is HTML-escaped.
"""
import base64
import datetime
import html
import io
import os
import platform
import shlex
from typing import Dict, Mapping, Optional, Sequence, Union

from nnunet_ssl.utilities.atomic import write_text

MAX_IMAGE_WIDTH = 1600  # wider pictures (nnU-Net's progress.png is 3000 px wide) are scaled down to this
TRAINING_CURVES = ("progress.png", "progress_ssl.png", "pool_audit.png")  # the last: with --pool-labels
PACKAGES = ("nnunet_ssl", "nnunetv2", "torch", "numpy", "scipy", "monai", "matplotlib")

STYLE = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1d2330;
       background: #fff; margin: 0 auto; padding: 24px 32px 48px; max-width: 1500px; line-height: 1.4; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #d8dde6; }
h3 { font-size: 1em; margin: 16px 0 6px; }
.meta, .note { color: #5a6273; font-size: 0.85em; }
nav a { margin-right: 14px; color: #2a5db0; text-decoration: none; font-size: 0.9em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.8em; margin: 6px 0; }
th, td { border: 1px solid #d8dde6; padding: 4px 7px; }
td { white-space: nowrap; }
th { background: #eef1f6; text-align: left; vertical-align: bottom; min-width: 3em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #f8f9fb; }
td.gain { color: #176b2c; font-weight: 600; }
td.loss { color: #a3211b; font-weight: 600; }
figure { margin: 8px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d8dde6; }
figcaption { font-size: 0.85em; color: #5a6273; margin-top: 2px; }
.curves { display: flex; flex-wrap: wrap; gap: 16px; }
.curves figure { flex: 0 1 560px; }
pre { background: #f3f5f8; border: 1px solid #d8dde6; padding: 8px 10px; font-size: 0.8em; white-space: pre-wrap;
      word-break: break-all; }
.missing { color: #a3211b; font-size: 0.85em; }
"""


def software_versions() -> Dict[str, str]:
    """python, the platform and the installed versions of PACKAGES (what a result depends on)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def png_data_uri(path: str, max_width: int = MAX_IMAGE_WIDTH) -> str:
    """The PNG file as a data: URI, scaled down to `max_width` pixels if wider."""
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        if image.width > max_width:
            small = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
            buffer = io.BytesIO()
            small.save(buffer, format="PNG", optimize=True)
            data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _is_number(cell: str) -> bool:
    head = cell.split(" ")[0].lstrip("+-[").rstrip(",]")
    return head.replace(".", "", 1).replace("e-", "", 1).isdigit()


def html_table(header: Sequence[str], cells: Sequence[Sequence[str]], classes: Sequence[Dict[int, str]] = ()) -> str:
    """A table of strings (escaped); numbers right-aligned; classes[row][column]: an extra CSS class."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(cells):
        extra = classes[i] if i < len(classes) else {}
        tds = []
        for j, cell in enumerate(row):
            css = " ".join(c for c in ("num" if _is_number(cell) else "", extra.get(j, "")) if c)
            tds.append(f"<td class=\"{css}\">{_e(cell)}</td>" if css else f"<td>{_e(cell)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _figure(what: str, path: str) -> str:
    """The PNG at `path`, embedded, with its file name as caption."""
    if not path or not os.path.isfile(path):
        return f"<p class=\"missing\">{_e(what)}: not written ({_e(path)})</p>"
    return (f"<figure><img src=\"{png_data_uri(path)}\" alt=\"{_e(what)}\">"
            f"<figcaption>{_e(path)}</figcaption></figure>")


def _command_text(command: Union[str, Sequence[str]]) -> str:
    return command if isinstance(command, str) else shlex.join(str(c) for c in command)


def write_report(path: str, title: str, rows: Sequence[dict] = (), statistics: Sequence[dict] = (),
                 figures: Optional[Mapping[str, str]] = None, training_curves: Optional[Mapping[str, str]] = None,
                 commands: Sequence[Union[str, Sequence[str]]] = (), versions: Optional[Mapping[str, str]] = None,
                 notes: Sequence[str] = (), repeats: Sequence[dict] = ()) -> str:
    """Write the page to `path` (atomically) and return `path`.

    rows: leaderboard rows (nnunet_ssl.evaluation.leaderboard.collect or make_row), shown as the leaderboard table;
    statistics: nnunet_ssl.evaluation.statistics.paired_statistics(rows), the paired-differences table;
    figures: heading -> PNG file (e.g. {"Dice per case": ..., "Overlays": ...}), in this order;
    training_curves: label -> a trained fold folder; its progress.png, progress_ssl.png and pool_audit.png are
        shown (a file the training did not write, e.g. nnUNetTrainer's progress_ssl.png, is left out);
    commands: the command lines that made the results (strings, or argument lists: quoted here);
    versions: name -> version (default: software_versions());
    notes: paragraphs of plain text under the title;
    repeats: nnunet_ssl.evaluation.statistics.repeat_summary(rows) (a benchmark's runs and draws), shown first,
        after the summary against the reference where `statistics` has entries.
    A figure whose file does not exist is named as missing, not skipped silently."""
    from nnunet_ssl.evaluation.leaderboard import LEADERBOARD_NOTE, table_cells
    from nnunet_ssl.evaluation.statistics import (DIFFERENCE_COLUMN, INTERVAL_COLUMN, REPEATS_NOTE, STATISTICS_NOTE,
                                                  SUMMARY_NOTE, repeat_cells, statistics_cells, summary_cells)

    versions = software_versions() if versions is None else versions
    sections = []  # (anchor, heading, body)
    if repeats and statistics:
        sections.append(("summary", "Summary", html_table(*summary_cells(list(repeats), statistics)) +
                         f"<p class=\"note\">{_e(SUMMARY_NOTE)}</p>"))
    if repeats:
        sections.append(("repeats", "Over runs and draws", html_table(*repeat_cells(list(repeats))) +
                         f"<p class=\"note\">{_e(REPEATS_NOTE)}</p>"))
    if rows:
        sections.append(("results", "Results", html_table(*table_cells(list(rows))) +
                         f"<p class=\"note\">{_e(LEADERBOARD_NOTE)}</p>"))
    if statistics:
        header, cells = statistics_cells(statistics)
        difference, interval = header.index(DIFFERENCE_COLUMN), header.index(INTERVAL_COLUMN)
        marks = [{} if not s.get("paired", True) else {difference: "gain", interval: "gain"} if s["ci_low"] > 0
                 else {difference: "loss", interval: "loss"} if s["ci_high"] < 0 else {} for s in statistics]
        sections.append(("statistics", f"Paired differences to {statistics[0]['reference']}",
                         html_table(header, cells, marks) + f"<p class=\"note\">{_e(STATISTICS_NOTE)} Green / red: "
                         f"the interval lies above / below 0.</p>"))
    for i, (caption, png) in enumerate((figures or {}).items()):
        sections.append((f"figure{i}", caption, _figure(caption, png)))
    if training_curves:
        parts = []
        for label, folder in training_curves.items():
            found = [os.path.join(folder, f) for f in TRAINING_CURVES if os.path.isfile(os.path.join(folder, f))]
            body = "".join(_figure(f"{label}: {os.path.basename(f)}", f) for f in found) or \
                f"<p class=\"missing\">no {' or '.join(TRAINING_CURVES)} in {_e(folder)}</p>"
            parts.append(f"<h3>{_e(label)}</h3><div class=\"curves\">{body}</div>")
        sections.append(("curves", "Training curves", "".join(parts)))
    if commands:
        sections.append(("commands", "Commands", "<pre>" + _e("\n".join(_command_text(c) for c in commands)) +
                         "</pre>"))
    sections.append(("versions", "Versions", html_table(["software", "version"], [[k, str(v)] for k, v in
                                                                                   versions.items()])))
    created = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    nav = "".join(f"<a href=\"#{anchor}\">{_e(heading)}</a>" for anchor, heading, _ in sections)
    page = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{_e(title)}</h1><p class=\"meta\">written {_e(created)} by nnunet_ssl "
            f"{_e(versions.get('nnunet_ssl', ''))}</p>"]
    page += [f"<p>{_e(n)}</p>" for n in notes]
    page.append(f"<nav>{nav}</nav>")
    page += [f"<section id=\"{anchor}\"><h2>{_e(heading)}</h2>{body}</section>" for anchor, heading, body in sections]
    page.append("</body></html>\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, "\n".join(page))
    return path
