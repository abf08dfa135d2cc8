"""Why a server start failed, read from what Triton left: its repository index and its log (pure: no process,
no network; ``server.TritonServer`` reads the files and asks the index, then calls these)."""

from __future__ import annotations

import re
from typing import Iterable, Mapping


def _first_line(reason: str, limit: int = 300) -> str:
    """The message of a load error without the Python traceback Triton appends (as literal \\n)."""
    text = reason.replace("\\n", "\n").strip()
    line = text.split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failed_models_from_index(index: Iterable[Mapping]) -> dict[str, str]:
    """Models of a ``/v2/repository/index`` answer that are not READY, with Triton's reason."""
    failed = {}
    for entry in index:
        state = entry.get("state", "")
        if state and state != "READY":
            failed[entry.get("name", "?")] = _first_line(entry.get("reason") or state)
    return failed


_LOAD_FAIL = re.compile(r"failed to load '([^']+)'(?: version \d+)?: (.*)")
_ENSEMBLE_FAIL = re.compile(r"(in ensemble '?([^',\s]+)'?, .*?)\"?$")
# The reason greedy up to the row's last bar (a lazy one before ``\s*\|`` tried every run of spaces again at each
# character: a reason of 160,000 spaces took 28 s to read).
_TABLE_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*\S+\s*\|\s*(UNAVAILABLE: .*)\|\s*$")


def failed_models_from_log(log_text: str) -> dict[str, str]:
    """Models that a server log reports as failing to load (the load errors and the final table)."""
    failed: dict[str, str] = {}
    for line in log_text.splitlines():
        m = _LOAD_FAIL.search(line)
        if m:
            failed.setdefault(m.group(1), _first_line(m.group(2)))
            continue
        m = _ENSEMBLE_FAIL.search(line)
        if m:
            failed.setdefault(m.group(2), _first_line(m.group(1)))
            continue
        m = _TABLE_ROW.match(line.strip())
        if m:
            failed.setdefault(m.group(1), _first_line(m.group(2).rstrip()))
    return failed
