"""Reading the JSON files runs and sweeps keep, with complete one-line errors.

``config.json``, ``result.json``, ``sweep.json`` and a JSON-lines corpus are plain
files a person may edit or a crash may cut short. A decoding error's
own ``msg`` can stop mid-sentence ("Invalid control character at"), so the messages
here name the file, the line and the column; the caller adds what to do about it.
``analysis/results.py`` has the same wording for the files the analysis reads (it
imports nothing from ``moba_jax``).
"""
from __future__ import annotations

import json
from typing import Any


def describe(path, e: json.JSONDecodeError, line: int | None = None) -> str:
    """``PATH is not valid JSON at line L column C (what is wrong)``; ``line`` is the
    file's line number of a JSON-lines record decoded on its own."""
    what = e.msg.removesuffix(" at")   # "Invalid control character at", "... starting at"
    return f"{path} is not valid JSON at line {line or e.lineno} column {e.colno} ({what})"


def load(path, error: type[Exception], fix: str) -> Any:
    """``json.load`` of ``path``; a malformed file raises ``error("<describe>; <fix>")``."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{describe(path, e)}; {fix}") from None

