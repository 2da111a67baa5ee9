"""Training rows vs BFCL's test items: which rows overlap the benchmark, per BFCL category.

Three checks, each against every BFCL v4 item that bfcl-eval ships (``bfcl_eval/data/*.json``,
read as files: bfcl_eval itself is not imported, its import has side effects):

* ``exact``          a user turn equals a BFCL question after normalisation (NFKC, lower case,
                     every run of non-alphanumerics -> one space);
* ``ngram``          at least ``threshold`` of a BFCL question's word ``n``-grams occur in one user
                     turn (containment of the question, so a question wrapped in other text counts;
                     questions shorter than n words are checked by ``exact`` only);
* ``function_docs``  the row's tool set equals a BFCL item's function set, both normalised the way
                     the converters normalise tools (OpenAI-valid names, JSON-schema types).

Defaults n=8, threshold 0.5. ``data.decontaminate``: report (default) lists the overlapping rows in
data_report.json; drop also removes them before mixing; off skips the check. Stdlib only; the data
is there only in the env that has bfcl-eval (the eval env, which runs data preparation).
"""

from __future__ import annotations

import importlib.util
import json
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from experiments.data import schema

MODES = ("off", "report", "drop")
PREFIX = "BFCL_v4_"
SKIP = ("format_sensitivity",)  # a list of other categories' ids, not test items


class DecontamError(RuntimeError):
    """The BFCL data cannot be found or read."""


def bfcl_data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or spec.origin is None:
        raise DecontamError("bfcl-eval is not installed in this environment (it is in the eval env); "
                            "set data.decontaminate=off to skip the BFCL overlap check")
    path = Path(spec.origin).parent / "data"
    if not any(path.glob(f"{PREFIX}*.json")):
        raise DecontamError(f"no {PREFIX}*.json under {path}")
    return path


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _user_texts(question) -> list[str]:
    """BFCL's ``question``: a list of turns, each a list of messages."""
    out = []
    for turn in question or []:
        for m in turn if isinstance(turn, list) else [turn]:
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                out.append(m["content"])
    return out


def tool_key(tools: Iterable[dict]) -> frozenset:
    """A tool set, normalised: the same key for a BFCL function list and the converted tools."""
    keys = []
    for t in tools:
        fn = t.get("function", t)
        params = fn.get("parameters")
        params = json.loads(params) if isinstance(params, str) else params
        tool = schema.normalize_tool({"name": fn.get("name"), "description": fn.get("description"), "parameters": params})
        keys.append(json.dumps(tool["function"], sort_keys=True, ensure_ascii=False))
    return frozenset(keys)


def load_bfcl(data_dir: Path | None = None) -> list[dict]:
    """Every BFCL item: {category, id, questions (user texts), tools (key or None)}."""
    items = []
    for path in sorted((data_dir or bfcl_data_dir()).glob(f"{PREFIX}*.json")):
        category = path.stem[len(PREFIX):]
        if category in SKIP:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            functions = entry.get("function")
            try:
                key = tool_key(functions) if isinstance(functions, list) and functions else None
            except schema.RowError:
                key = None
            items.append({"category": category, "id": entry.get("id"), "questions": _user_texts(entry.get("question")),
                          "tools": key})
    return items


class Index:
    """BFCL questions and function sets, indexed for the three checks."""

    def __init__(self, items: list[dict], n: int = 8, threshold: float = 0.5):
        if n < 1 or not 0 < threshold <= 1:
            raise ValueError(f"decontamination n={n}, threshold={threshold}: need n >= 1 and 0 < threshold <= 1")
        self.n, self.threshold, self.items = n, threshold, items
        self.exact, self.grams, self.sizes, self.tools = defaultdict(set), defaultdict(set), {}, defaultdict(set)
        for k, item in enumerate(items):
            for qi, q in enumerate(item["questions"]):
                norm = normalize(q)
                self.exact[norm].add(k)
                g = ngrams(norm.split(), n)
                if g:
                    self.sizes[k, qi] = len(g)
                    for gram in g:
                        self.grams[gram].add((k, qi))
            if item["tools"]:
                self.tools[item["tools"]].add(k)

    def matches(self, row: dict) -> list[tuple[int, str]]:
        """(BFCL item, check) pairs a converted row overlaps."""
        found = set()
        for m in row["messages"]:
            if m["role"] != "user":
                continue
            norm = normalize(m["content"])
            found |= {(k, "exact") for k in self.exact.get(norm, ())}
            hits = Counter(q for gram in ngrams(norm.split(), self.n) for q in self.grams.get(gram, ()))
            found |= {(k, "ngram") for (k, qi), c in hits.items() if c / self.sizes[k, qi] >= self.threshold}
        if row.get("tools"):
            found |= {(k, "function_docs") for k in self.tools.get(tool_key(row["tools"]), ())}
        return sorted(found)


def check(converted: list[list[dict]], names: list[str], index: Index, mode: str = "report"
          ) -> tuple[list[list[dict]], dict]:
    """Rows per source -> (rows kept, report). ``drop`` removes every overlapping row."""
    if mode not in MODES or mode == "off":
        raise ValueError(f"data.decontaminate={mode!r}: expected report or drop here")
    by_category = defaultdict(lambda: Counter())
    kept, per_source, examples = [], {}, []
    for name, rows in zip(names, converted):
        flagged = 0
        keep = []
        for j, row in enumerate(rows):
            found = index.matches(row)
            if found:
                flagged += 1
                for category in {index.items[k]["category"] for k, _ in found}:
                    by_category[category]["rows"] += 1
                for category, how in {(index.items[k]["category"], how) for k, how in found}:
                    by_category[category][how] += 1
                if len(examples) < 20:
                    examples.append({"source": name, "row": j, "matches": [
                        {"bfcl_id": index.items[k]["id"], "check": how} for k, how in found[:5]]})
            if not (found and mode == "drop"):
                keep.append(row)
        kept.append(keep)
        per_source[name] = {"rows_checked": len(rows), "rows_overlapping": flagged,
                            "rows_dropped": len(rows) - len(keep)}
    report = {"mode": mode, "n": index.n, "threshold": index.threshold, "bfcl_items": len(index.items),
              "rows_overlapping": sum(s["rows_overlapping"] for s in per_source.values()),
              "rows_dropped": sum(s["rows_dropped"] for s in per_source.values()),
              "by_category": {c: dict(sorted(v.items())) for c, v in sorted(by_category.items())},
              "by_source": per_source, "examples": examples}
    return kept, report
