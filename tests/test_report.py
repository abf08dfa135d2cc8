"""Reports: Markdown and HTML say the same, the HTML stands alone, a headless browser renders it, and the
sweep report lists every point (failed ones too) with its CSV and JSON."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import pytest

from generator.measure.report_loadtest import loadtest_doc
from generator.measure.report_sweep import POINT_COLUMNS, write_sweep_report
from generator.measure.results import BestPoint, LoadTestResult, PointStatus, SweepPoint, SweepResult

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_markdown_and_html_carry_the_same_tables(cpu_loadtest):
    out = cpu_loadtest.out_dir
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    for heading in ("Summary", "SLO gate", "Load generator", "Where the time went (server side)",
                    "Streamed output checks", "Appendix: metric definitions"):
        assert f"## {heading}" in md and f"<h2>{heading}</h2>" in page.replace("&#x27;", "'")
    assert md.count("\n|---") == page.count("<table>")
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)  # self-contained
    assert len(re.findall(r"!\[[^]]*\]\(plots/(\w+)\.png\)", md)) == len(images)
    assert all((out / "plots" / f"{name}.png").is_file() for name in re.findall(r"\(plots/(\w+)\.png\)", md))
    assert "genai-perf" in md and "vLLM" in md  # the appendix's side-by-side definitions


def test_report_is_built_from_results_alone(cpu_loadtest):
    results = LoadTestResult.model_validate_json((cpu_loadtest.out_dir / "results.json").read_text(encoding="utf-8"))
    assert results == cpu_loadtest.results
    doc = loadtest_doc(results)
    assert doc.markdown() == (cpu_loadtest.out_dir / "report.md").read_text(encoding="utf-8")


HOSTILE = ["HTTP 500: <img src=x onerror=alert(1)>\n\n# All SLOs met\n| PASS | 0 |", "a\r\n> quoted\u2028- item",
           "<script>alert(1)</script>", "`<b>` ``` </b>",
           "[All checks passed: approve](https://evil.example/a) ![](https://evil.example/p.png) \\[x](https://e.example)"]


@pytest.mark.parametrize("text", HOSTILE)
def test_text_from_a_server_never_changes_the_markdown_structure(text):
    """An endpoint's error text reached report.md's tables raw: its <img onerror> tag, blank line and '# All SLOs
    met' added raw HTML and a heading (report.html escaped it). Every block kind, parsed as CommonMark."""
    from markdown_it import MarkdownIt

    from generator.measure.report_doc import Doc

    doc = Doc(f"run {text}")
    doc.h(f"Errors {text}")
    doc.p(f"**Verdict** `{text}` {text}")
    doc.bullets([text, "plain"])
    doc.table(["message", "count"], [[text, 6], ["ok", 1]])
    doc.pre(text)
    tokens = MarkdownIt("commonmark").enable("table").parse(doc.markdown())
    inline = [c for t in tokens for c in (t.children or [])]
    assert not [t.type for t in tokens + inline if t.type.startswith("html") or t.type in ("link_open", "image")]
    assert [t.tag for t in tokens if t.type == "heading_open"] == ["h1", "h2"]
    assert [t.type for t in tokens if t.type in ("bullet_list_open", "blockquote_open", "table_open", "fence")] == \
        ["bullet_list_open", "table_open", "fence"]
    assert sum(t.type == "tr_open" for t in tokens) == 3 and sum(t.type == "list_item_open" for t in tokens) == 2
    cells = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type in ("th_open", "td_open")]
    assert cells[2:] == [cells[2], "6", "ok", "1"]  # the text stays in its cell, the count in the next
    fence = next(t for t in tokens if t.type == "fence")
    assert fence.content == text.replace("\r\n", "\n") + "\n"  # CommonMark reads CRLF as LF


def test_a_page_holding_half_a_utf16_pair_is_written(tmp_path):
    """review14: an error text from a records file (JSON "\\ud800", which json.loads hands back) made writing
    report.html (and report.md's code block) a UnicodeEncodeError traceback after the figures were written."""
    from generator.measure.report_doc import Doc

    doc = Doc("run")
    doc.pre("HTTP 500: bad \ud800 thing")
    doc.table(["message", "count"], [["bad \ud800 thing", 2]])
    doc.write(tmp_path)
    assert "bad \\ud800 thing" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "bad \\ud800 thing" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_control_characters_from_a_server_are_shown_not_written_into_report_md(tmp_path):
    """review28: an OpenAI-compatible server's error event holding ESC sequences ("\\x1b[2J", a title set with OSC ...
    BEL) went raw into report.md's error table (the terminal was escaped): `cat report.md` cleared the screen."""
    from generator.measure.report_doc import Doc

    doc = Doc("run \x1b]0;title\x07")
    doc.table(["message", "count"], [["\x1b[2J\x1b[31mowned\u202e", 6]])
    doc.write(tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert not [c for c in md if c in "\x1b\x07\u202e"]
    assert "\\\\x1b\\[2J\\\\x1b\\[31mowned\\\\u202e | 6 |" in md  # shown as escapes (Markdown-escaped)


def test_text_from_a_servers_metrics_is_drawn_as_written(cpu_loadtest):
    """review14: a metric label ``model="$\\nope{$"`` from the server's /metrics reached a plot legend, matplotlib
    read it as mathtext and failed: the load test ended in a traceback and its whole output folder was removed."""
    results = cpu_loadtest.results.model_copy(deep=True)
    hostile = 'nv_inference_pending_request_count{model="$\\nope{$ $x^$"}'
    results.server.metrics.series = {hostile: [(0.0, 1.0), (1.0, 2.0)]}
    doc = loadtest_doc(results)
    assert doc.figures["gauges"].startswith(b"\x89PNG")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: apt-get install -y chromium")
def test_headless_browser_renders_the_html_report(cpu_loadtest, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400",
         f"--screenshot={shot}", (cpu_loadtest.out_dir / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1200)
    assert img.std() > 0.1  # not a blank page
    green = (abs(img[..., 0] - 118 / 255) < 0.03) & (abs(img[..., 1] - 185 / 255) < 0.03) & (img[..., 2] < 0.05)
    assert green.sum() > 500  # the title rule and the TTFT histogram, drawn in #76b900


def test_sweep_report_lists_every_point(cpu_loadtest, tmp_path):
    points = [
        SweepPoint(label="max_batch_size=4", overrides=["serving.max_batch_size=4"], dir="points/0",
                   results=cpu_loadtest.results),
        SweepPoint(label="max_batch_size=64", overrides=["serving.max_batch_size=64"], dir="points/1",
                   status=PointStatus.INVALID, detail="serving.max_batch_size (64) exceeds build.max_batch_size (16)"),
    ]
    best = BestPoint(label="max_batch_size=4", overrides=points[0].overrides, reason="only one")
    write_sweep_report(tmp_path, "sweep", SweepResult(points=points, best=best), "ttft_p99<120s")
    rows = list(csv.DictReader((tmp_path / "points.csv").open(encoding="utf-8")))
    assert [r["point"] for r in rows] == ["max_batch_size=4", "max_batch_size=64"]
    assert list(rows[0]) == list(POINT_COLUMNS)
    assert float(rows[0]["output_tokens_per_s"]) > 0 and rows[1]["status"] == "invalid setting"
    assert json.loads((tmp_path / "points.json").read_text())["best"]["label"] == "max_batch_size=4"
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "INVALID SETTING" in md and "exceeds build.max_batch_size" in md and "**max_batch_size=4**" in md
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text(encoding="utf-8")
