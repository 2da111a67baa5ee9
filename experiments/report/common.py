"""What every report section shares: formatting (pure), the plot writer, paths as the report shows them."""
from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.core import runs


REPORT = "report.md"

MISSING = "-"


class ReportError(RuntimeError):
    """A report cannot be built as asked (e.g. a named run does not exist)."""


def read_json_or_none(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return runs.read_json(path)
    except runs.RunError:
        return None


def norm_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def same_value(a, b, rel: float = 1e-9) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) == (b is None or (isinstance(b, float) and math.isnan(b)))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= rel * max(1.0, abs(float(a)), abs(float(b)))
    return a == b


def fmt(value, decimals: int = 2) -> str:
    """Fixed decimals (no exponent, no thousands separator): what the report shows is what the file
    holds, rounded to the shown decimals. None/NaN -> '-'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and decimals == 0:
        return str(int(round(value)))
    return f"{float(value):.{decimals}f}"


def usd(value: float | None, decimals: int = 4) -> str:
    return MISSING if value is None else f"${value:.{decimals}f}"


def markdown_table(df: pd.DataFrame) -> str:
    """Cells are already strings; tabulate must not re-parse numbers."""
    if df.empty:
        return ""
    return df.to_markdown(index=False, disable_numparse=True, stralign="right") + "\n"


def rel_path(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def run_accelerator(run: dict) -> str | None:
    acc = (run.get("config") or {}).get("profile", {}).get("accelerator")
    if acc:
        return acc
    return "cpu" if run["info"].get("profile") == "cpu" else ("cuda" if run["info"].get("profile") else None)


def code_path(d: dict, path: Path) -> str:
    """A path as the report shows it: a code span relative to results/."""
    return f"`{rel_path(path, d['results'])}`"


def image(d: dict, plots: dict[str, Path], name: str, alt: str) -> str:
    """Markdown for a plot written for this report (paths relative to the report's folder)."""
    return f"![{alt}]({rel_path(plots[name], d['subject']['dir'])})"


def need_merge(d: dict) -> str:
    """'`make merge RUN=..`, then ' when the merged model a section asks for does not exist yet."""
    sdir = d["subject"]["dir"]
    if d["kind"] == "merged" and not (sdir / "merged" / "config.json").exists():
        return f"`make merge RUN={d['subject']['id']}`, then "
    return ""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    plt = pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path
