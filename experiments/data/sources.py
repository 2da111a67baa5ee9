"""Reading raw rows (a local JSON Lines / JSON list file, or the hub through ``datasets``) and
writing converted ones. ``datasets`` is imported only when the hub is asked for."""

from __future__ import annotations

import json
import os
from typing import Iterable


def load_raw(path: str | None = None, hf_id: str | None = None, split: str = "train",
             max_rows: int | None = None, config: str | None = None) -> list[dict]:
    """Raw rows from a local file (JSON Lines, or one JSON list like ToolACE's data.json) or from
    the hub through ``datasets`` (imported only then; ``config``: the dataset's configuration)."""
    if (path is None) == (hf_id is None):
        raise ValueError("give exactly one of path= or hf_id=")
    if path is not None:
        rows = read_rows(path)
    else:
        import datasets  # heavy; the train and eval envs have it

        rows = datasets.load_dataset(hf_id, config, split=split)
        if max_rows is not None:
            rows = rows.select(range(min(max_rows, len(rows))))
        rows = rows.to_list()
    return rows[:max_rows] if max_rows is not None else rows


class DataFileError(ValueError):
    """A data file that is missing or does not parse; the message names the file (and line)."""


def read_rows(path: str) -> list[dict]:
    """JSON Lines, or one JSON list; a bad line is named `FILE:LINE`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataFileError(f"data.path={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"data.path={path}: cannot be read ({exc})") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataFileError(f"{path}: expected JSON objects (one per line, or a list of them)")
    return rows


def write_jsonl(rows: Iterable[dict], path: str) -> int:
    """Write rows as JSON Lines atomically (tmp file + rename); returns the row count."""
    tmp = f"{path}.tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
