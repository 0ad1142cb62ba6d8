"""Reading plain JSON-lines records: the analysis's error and warning classes, JSON error
messages that say where and what, and the finiteness check of a recorded number.

:mod:`analysis.results` re-exports ``AnalysisError``, ``AnalysisWarning`` and
``json_error``; import them from there.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path


class AnalysisError(ValueError):
    """A problem with the inputs of an analysis; the message names it and the fix."""


class AnalysisWarning(UserWarning):
    """Something was skipped or extrapolated; the analysis continued without it."""


def finite(x) -> bool:
    """A real number (not a bool, not NaN or infinite), as a JSON record holds it."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def json_error(path, e: json.JSONDecodeError, line: int | None = None) -> str:
    """``PATH is not valid JSON at line L column C (what is wrong)``: the whole message
    (``e.msg`` alone can stop mid-sentence, "Invalid control character at"); ``line`` is
    the file's line number of a JSON-lines record decoded on its own."""
    what = e.msg.removesuffix(" at")
    return f"{path} is not valid JSON at line {line or e.lineno} column {e.colno} ({what})"


def read_jsonl(path: Path) -> list[dict]:
    """Parse a JSON-lines file; a truncated last line (a writer mid-flush) is dropped with a warning."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                warnings.warn(f"{path}:{i}: ignoring truncated last line", AnalysisWarning, stacklevel=3)
                continue
            raise AnalysisError(f"{json_error(path, e, i)}; fix or delete that line") from None
        if not isinstance(obj, dict):
            raise AnalysisError(f"{path}:{i} is not a JSON object; each line must be one run/step record")
        out.append(obj)
    return out
