"""The neutral document behind every report: headings, paragraphs, tables and figures, rendered twice.

A report page is built once as a list of blocks and written as Markdown (plots beside it as PNG files)
and as one self-contained HTML page (plots embedded as base64 PNG), so the two always say the same
thing. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from generator.fsutil import atomic_write_text


@dataclass
class Doc:
    """One report page as blocks; markdown() and html() render the same blocks, write() both."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.blocks.append(("table", (list(headers), [[_cell(c) for c in r] for r in rows])))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def figure(self, name: str, fig, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.figures[name] = buf.getvalue()
        self.blocks.append(("img", (name, caption)))

    def markdown(self) -> str:
        out = [f"# {md_text(self.title)}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {md_text(value)}", ""]
            elif kind == "p":
                out += [md_text(value), ""]
            elif kind == "ul":
                out += [f"- {md_text(v)}" for v in value] + [""]
            elif kind == "pre":
                fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", value)), default=0))
                out += [fence, value, fence, ""]
            elif kind == "img":
                out += [f"![{md_text(value[1])}](plots/{value[0]}.png)", "", f"*{md_text(value[1])}*", ""]
            elif kind == "table":
                headers, rows = value
                out.append("| " + " | ".join(md_text(h) for h in headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(md_text(c).replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(v)}</li>" for v in value) + "</ul>")
            elif kind == "pre":
                body.append(f"<pre>{html.escape(value)}</pre>")
            elif kind == "img":
                data = base64.b64encode(self.figures[value[0]]).decode()
                body.append(f'<figure><img alt="{html.escape(value[1])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(value[1])}</figcaption></figure>")
            elif kind == "table":
                headers, rows = value
                head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                cells = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))

    def write(self, out_dir: Path, stem: str = "report") -> None:
        plots = out_dir / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        for name, png in self.figures.items():
            (plots / f"{name}.png").write_bytes(png)
        for suffix, text in (("md", self.markdown()), ("html", self.html())):
            atomic_write_text(out_dir / f"{stem}.{suffix}", utf8_safe(text))


def utf8_safe(text: str) -> str:
    """Half a UTF-16 pair (a records file's or a baseline's ``"\\ud800"``) as its escape: UTF-8 cannot hold it, and
    writing a page or a summary holding one was a traceback."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2733; padding: 0 1em; }}
h1 {{ border-bottom: 3px solid #76b900; padding-bottom: .3em; }}
h2 {{ margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }}
table {{ border-collapse: collapse; margin: .8em 0; font-size: 14px; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }}
th {{ background: #f3f6f9; }} td.t, th:first-child {{ text-align: left; }}
tr:nth-child(even) td {{ background: #fafbfc; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #e1e4e8; }}
figcaption {{ color: #57606a; font-size: 13px; }}
pre {{ background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; }}
code {{ background: #f6f8fa; padding: 0 3px; }}
.pass {{ color: #1a7f37; font-weight: 600; }} .fail {{ color: #cf222e; font-weight: 600; }}
.inconclusive {{ color: #9a6700; font-weight: 600; }}
</style></head><body>
{body}
</body></html>
"""


_NUMERIC = re.compile(r"^[-+]?[0-9.,]+\s*(%|ms|s)?$|^–$")


def _td(cell: str) -> str:
    """Numbers align right, words left."""
    return f"<td>{_inline(cell)}</td>" if _NUMERIC.match(cell) else f'<td class="t">{_inline(cell)}</td>'


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


_VERDICT_CLASS = {"PASS": "pass", "FAIL": "fail", "INCONCLUSIVE": "inconclusive", "CLIENT-LIMITED": "inconclusive"}


def _inline(text: str) -> str:
    """Escape, then the marks the reports use: **bold**, `code`, and coloured verdict words."""
    out = html.escape(text)
    parts = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    for word, cls in _VERDICT_CLASS.items():
        out = out.replace(word, f'<span class="{cls}">{word}</span>')
    return out


_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """Control characters and bidi overrides written as ``\\xNN`` / ``\\uNNNN`` (newlines and tabs kept): text from
    outside as a terminal shows it, in the CLI's lines (``cli._app.escape``) and in report.md, which people read with
    ``cat`` (review28: an OpenAI server's error holding ESC sequences, written raw into its table, cleared the screen)."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)


def md_text(text: str) -> str:
    """One line of Markdown text: no line break (a server's error text with a blank line and ``# ...`` added a
    heading and left the table), no raw HTML tag (``<`` as ``&lt;``; GitHub strips tags, other renderers run
    them) and no link or image (``[`` escaped, and a backslash before it too: a baseline's ``[All checks
    passed](https://...)`` was a link in the CI summary, review14), and ``utf8_safe``. The reports' own marks
    (``**``, backticks) stay; control characters are ``visible``."""
    return " ".join(visible(utf8_safe(text)).splitlines()).replace("\\", "\\\\").replace("<", "&lt;").replace("[", "\\[")


def interval_cell(i: Any, fmt: str = "{:.1f}") -> str:
    """An ``intervals.Interval`` as ``estimate [low, high] (n=N)``: no figure without the count behind it."""
    if i is None:
        return "–"
    return f"{fmt.format(i.estimate)} [{fmt.format(i.low)}, {fmt.format(i.high)}] (n={i.n})"


def pyplot():
    """matplotlib on its Agg backend: plots without a display, every text drawn as written: with mathtext on, a
    server's metric label ``model="$\\nope{$"`` in a legend failed the figure, and with it the whole load test's
    output folder was removed after the run (review14)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt
