"""What a BFCL evaluation covers (pure): category sets, the seeded `quick` subset, skip reasons.

Category names are bfcl-eval's own (`bfcl_eval.constants.category_mapping`); a test checks that
FULL + SKIPPED + NOT_APPLICABLE still covers every category bfcl-eval knows.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

NON_LIVE = ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel",
            "parallel_multiple", "irrelevance"]
LIVE = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
        "live_irrelevance", "live_relevance"]
MULTI_TURN = ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
              "multi_turn_long_context"]
# memory_kv (BM25) and memory_rec_sum (plain text) keep their memory in local files: offline.
MEMORY = ["memory_kv", "memory_rec_sum"]
FULL = NON_LIVE + LIVE + MULTI_TURN + MEMORY

_NO_SERPAPI = "needs live web search through SerpAPI (network and an API key)"
SKIPPED = {
    "web_search_base": _NO_SERPAPI,
    "web_search_no_snippet": _NO_SERPAPI,
    "memory_vector": "downloads a sentence-transformers embedding model from the Hugging Face Hub",
}
# Not a gap in our coverage: bfcl-eval itself never runs it for function-calling models.
NOT_APPLICABLE = {
    "format_sensitivity": "not scored; bfcl-eval runs it for prompting models only (ours is FC)",
}
AGENTIC = ["web_search_base", "web_search_no_snippet", "memory_kv", "memory_vector", "memory_rec_sum"]
IRRELEVANCE = ("irrelevance", "live_irrelevance")   # no call is the right answer
RELEVANCE = ("live_relevance",)                      # any call is the right answer

QUICK_PER_CATEGORY = 5


def group_of(category: str) -> str:
    """bfcl's score-folder grouping: non_live, live, multi_turn or agentic."""
    if category in LIVE:
        return "live"
    if category in MULTI_TURN:
        return "multi_turn"
    if category in AGENTIC:
        return "agentic"
    return "non_live"


def resolve(spec: str | Sequence[str], per_category: int | None = None) -> tuple[str, list[str], int | None]:
    """`spec` -> (set name, categories, ids per category or None for every id).

    "full": every offline category, all ids. "quick": the same categories, `per_category`
    (default QUICK_PER_CATEGORY) seeded ids each. A list: those categories, all ids unless
    `per_category` is given.
    """
    if isinstance(spec, str):
        if spec == "full":
            return "full", list(FULL), per_category
        if spec == "quick":
            return "quick", list(FULL), per_category or QUICK_PER_CATEGORY
        spec = [c for c in re.split(r"[,\s]+", spec) if c]
    categories = list(dict.fromkeys(spec))
    blocked = {c: SKIPPED.get(c) or NOT_APPLICABLE.get(c) for c in categories
               if c in SKIPPED or c in NOT_APPLICABLE}
    if blocked:
        raise ValueError(f"cannot run offline: {blocked}")
    unknown = [c for c in categories if c not in FULL]
    if unknown:
        raise ValueError(f"unknown BFCL categories {unknown}; known: {FULL}")
    return "custom", categories, per_category


def quick_ids(category: str, entries: Sequence[dict], k: int, seed: int) -> list[str]:
    """A fixed, seeded subset of one category's ids, in dataset order.

    `entries` are bfcl's dataset entries of the category (load_dataset_entry). Memory
    questions need their scenario's prerequisite conversations first (a serial chain), so
    memory uses the scenario with the shortest chain and adds all of its prerequisites.
    """
    rng = random.Random(f"{seed}:{category}")
    if category.startswith("memory_"):
        return _quick_memory_ids(entries, k, rng)
    ids = [e["id"] for e in entries]
    picked = set(rng.sample(ids, min(k, len(ids))))
    return [i for i in ids if i in picked]


def _quick_memory_ids(entries: Sequence[dict], k: int, rng: random.Random) -> list[str]:
    def scenario(e: dict) -> str:  # memory_kv_prereq_32-notetaker-0 -> notetaker
        return e.get("scenario") or e["id"].split("-")[1]

    turns: dict[str, int] = {}
    for e in entries:
        if is_prereq(e["id"]):
            turns[scenario(e)] = turns.get(scenario(e), 0) + len(e["question"])
    cheapest = min(turns, key=lambda s: (turns[s], s))
    questions = [e["id"] for e in entries if not is_prereq(e["id"]) and scenario(e) == cheapest]
    picked = set(rng.sample(questions, min(k, len(questions))))
    return [e["id"] for e in entries
            if e["id"] in picked or (is_prereq(e["id"]) and scenario(e) == cheapest)]


def is_prereq(test_id: str) -> bool:
    """Memory prerequisite conversations: generated, never scored."""
    return "_prereq_" in test_id


def category_of(test_id: str) -> str:
    """bfcl ids are <category>_<index>; same rule as bfcl_eval.utils.extract_test_category_from_id."""
    return test_id.split(":")[0].rsplit("_", 1)[0]


def model_key(served_model_name: str) -> str:
    """The key our model gets in bfcl-eval's MODEL_CONFIG_MAPPING and its result folders.

    bfcl maps result-folder names back to keys by replacing "_" with "/", so the key must hold
    neither; "local-" keeps it clear of bfcl's own entries.
    """
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", served_model_name).strip("-.") or "model"
    return f"local-{slug}"
