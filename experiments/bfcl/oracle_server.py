"""A local OpenAI-compatible server that answers BFCL questions from bfcl-eval's ground truth.

    python -m experiments.bfcl.oracle_server --port 8201 [--mode oracle] [--per-category 5 --seed 0]

It recognises the question by its user messages and offered tool names, then answers as a
function-calling model would (`tool_calls`). Modes (the request's `model` picks one when it
names a mode, else --mode; GET /v1/models lists them):
  oracle     the ground-truth call(s); text where no call is due; memory answers as text
  wrong      always one call to a function that was not offered
  malformed  garbage text that is not a tool call
  none       plain text, never a call
  mixed      one of the four above per question (fixed by a hash of its id): non-trivial scores
A message list ending in a tool result always gets a short text (ends a multi-turn step).
POST /v1/chat/completions answers with `tool_calls` (the api path); POST /v1/completions reads
the ChatML prompt of the native path and answers in Hermes text (experiments.bfcl.oracle_text).
GET /stats counts requests per model and per matched id; --delay and --fail-first (one 503 per
question and step, to exercise retries) make it behave like a slow or flaky server;
--die-after N makes it kill itself (SIGKILL) when chat request N+1 arrives, unanswered: a server
that dies mid-evaluation at a known point. --api-key K answers 401 to any request without
`Authorization: Bearer K` (like vLLM's --api-key, /health and /stats excepted).

Known limits: some questions are identical in bfcl's data with different answers (3 live
prompt pairs, one of each being irrelevance; multi_turn_base vs long_context where file content
differs); the first candidate wins and /stats counts it as ambiguous. --per-category restricts
the index to the seeded `quick` ids, which removes such clashes for that plan.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import signal
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from experiments.bfcl import oracle_text, spec
from experiments.bfcl.oracle_values import first, pick, source_text

MODES = ("oracle", "wrong", "malformed", "none", "mixed")
WRONG_FUNCTION = "oracle_function_not_offered"
GARBAGE = '<tool_call>{"name": get_weather, "arguments": {"city": </tool_call> ]]} #@!'
NO_CALL_TEXT = "I cannot help with that using the available tools."


@dataclass
class Question:
    id: str
    category: str
    turns: list[list[str]]          # user texts per turn (held-out turns: bfcl's injected prompt)
    functions: list[dict]           # function docs, held-out ones included
    first_names: set[str]           # tool names offered at turn 0 ("." -> "_")
    ground_truth: object = None
    all_names: set[str] = field(default_factory=set)
    prompt_turns: list[list[str]] = field(default_factory=list)  # as the prompting flow words them

    @property
    def multi(self) -> bool:
        return self.category in spec.MULTI_TURN or self.category in spec.MEMORY


def load_questions(categories, ids: set[str] | None = None) -> list[Question]:
    """bfcl's own dataset and ground truth (needs BFCL_PROJECT_ROOT set to a folder of ours)."""
    from bfcl_eval.constants.default_prompts import (DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC,
                                                     DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING)
    from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

    questions = []
    for category in categories:
        truth = {}
        if category not in spec.IRRELEVANCE + spec.RELEVANCE:  # those have no ground truth
            for gt in load_ground_truth_entry(category):
                # memory answers are shared by every backend: memory_0-... -> memory_kv_0-...
                test_id = category + gt["id"][len("memory"):] if category in spec.MEMORY else gt["id"]
                truth[test_id] = gt["ground_truth"]
        # Without bfcl's language hints, which retype Java/JS parameters as "string".
        for entry in load_dataset_entry(category, include_language_specific_hint=False):
            if ids is not None and entry["id"] not in ids:
                continue
            held_out = entry.get("missed_function") or {}
            turns = [[m["content"] for m in turn if m["role"] == "user"]
                     or ([DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC] if str(i) in held_out else [])
                     for i, turn in enumerate(entry["question"])]
            prompt_turns = [[m["content"] for m in turn if m["role"] == "user"]
                            or ([DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING.format(
                                functions=held_out[str(i)])] if str(i) in held_out else [])
                            for i, turn in enumerate(entry["question"])]
            extra = [f for docs in held_out.values() for f in docs]
            functions = list(entry.get("function", [])) + extra
            first = {f["name"].replace(".", "_") for f in entry.get("function", [])}
            questions.append(Question(
                id=entry["id"], category=category, turns=turns, functions=functions,
                first_names=first, ground_truth=truth.get(entry["id"]),
                all_names=first | {f["name"].replace(".", "_") for f in extra}, prompt_turns=prompt_turns))
    return questions


# ---------------------------------------------------------------- answers (pure)

def _arguments(params: dict, doc: dict, language: str) -> dict:
    props = doc["parameters"].get("properties", {})
    required = doc["parameters"].get("required", [])
    args = {}
    for name, options in params.items():
        if not options or ("" in options and name not in required):
            continue  # optional: bfcl accepts it omitted (no options: a data gap nobody can match)
        if language == "python":
            args[name] = pick(first(options))
        else:
            args[name] = source_text(options, props.get(name, {}), language)
    return args


def _placeholder_args(tool: dict) -> dict:
    schema = tool.get("function", {}).get("parameters", {})
    blank = {"string": "x", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    return {p: blank.get(schema.get("properties", {}).get(p, {}).get("type"), "x")
            for p in schema.get("required", [])}


def _parse_call(text: str, functions: list[dict]) -> tuple[str, dict]:
    """bfcl's multi-turn ground truth "mv(source='a', destination='b')" -> (name, arguments)."""
    call = ast.parse(text.strip(), mode="eval").body
    name = ast.unparse(call.func)
    order = next((list(f["parameters"].get("properties", {})) for f in functions if f["name"] == name), [])
    args = {order[i]: ast.literal_eval(a) for i, a in enumerate(call.args)}
    args.update({kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
    return name, args


def oracle_answer(q: Question, turn: int, tools: list[dict], dotted: bool = False) -> list[tuple[str, dict]] | str:
    """The right answer for question `q` at `turn`: calls, or text where no call is due. Names as
    offered: "." -> "_" on the chat API, kept when `dotted` (the native path's prompt)."""
    if q.category in spec.IRRELEVANCE:
        return NO_CALL_TEXT
    if q.category in spec.RELEVANCE:
        return [(tools[0]["function"]["name"], _placeholder_args(tools[0]))] if tools else NO_CALL_TEXT
    if q.category in spec.MEMORY:
        return "Noted." if spec.is_prereq(q.id) else f"The answer is {q.ground_truth[0]}."
    if q.category in spec.MULTI_TURN:
        calls = q.ground_truth[turn] if turn < len(q.ground_truth) else []
        return [_parse_call(c, q.functions) for c in calls] or NO_CALL_TEXT
    language = {"simple_java": "java", "simple_javascript": "javascript"}.get(q.category, "python")
    docs = {f["name"]: f for f in q.functions}
    return [(name if dotted else name.replace(".", "_"), _arguments(params, docs[name], language))
            for expected in q.ground_truth for name, params in expected.items()]


class Oracle:
    def __init__(self, questions: list[Question]):
        self.by_text: dict[str, list[Question]] = defaultdict(list)
        for q in questions:
            first = q.turns[0][0] if q.turns and q.turns[0] else ""
            self.by_text[first].append(q)

    def match(self, users: list[str], names: set[str], prompting: bool = False) -> tuple[Question | None, int, bool]:
        """(question, turn, ambiguous) for a request's user texts and offered tool names."""
        found = []
        names = {n.replace(".", "_") for n in names}
        for q in self.by_text.get(users[0] if users else "", []):
            if not (q.first_names <= names <= (q.all_names if q.multi else q.first_names)):
                continue
            for turn in range(len(q.turns) if q.multi else 1):
                if [t for ts in (q.prompt_turns if prompting else q.turns)[:turn + 1] for t in ts] == users:
                    found.append((q, turn))
                    break
        if not found:
            return None, 0, False
        answers = {json.dumps(oracle_answer(q, t, []) if q.category not in spec.RELEVANCE else "call",
                              sort_keys=True, default=str) for q, t in found}
        return found[0][0], found[0][1], len(answers) > 1

    def reply(self, mode: str, body: dict) -> tuple[dict, str, bool]:
        """(assistant message, matched id or "?", ambiguous)."""
        messages, tools = body.get("messages", []), body.get("tools") or []
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        names = {t["function"]["name"] for t in tools}
        q, turn, ambiguous = self.match(users, names)
        answer, test_id = self.answer(mode, q, turn, tools, messages and messages[-1].get("role") == "tool")
        return _message(answer), test_id, ambiguous

    def complete(self, mode: str, body: dict) -> tuple[str, str, bool]:
        """/v1/completions: (Hermes text, matched id or "?", ambiguous) for a native-path prompt."""
        prompt = oracle_text.parse_prompt(body.get("prompt", ""))
        tools = oracle_text.as_chat_tools(prompt["tools"])
        q, turn, ambiguous = self.match(prompt["users"], {t["function"]["name"] for t in tools}, prompting=True)
        answer, test_id = self.answer(mode, q, turn, tools, prompt["after_tool"], dotted=True)
        return oracle_text.hermes(answer), test_id, ambiguous

    def answer(self, mode: str, q: Question | None, turn: int, tools: list[dict], after_tool: bool,
               dotted: bool = False):
        """(answer, matched id or "?"): calls [(name, arguments)] or text."""
        test_id = q.id if q else "?"
        if mode == "mixed":
            mode = MODES[zlib.crc32(test_id.encode()) % 4]
        if after_tool:
            answer = "Done."
        elif mode == "none":
            answer = NO_CALL_TEXT
        elif mode == "malformed":
            answer = GARBAGE
        elif mode == "wrong":
            answer = [(WRONG_FUNCTION, {})]
        elif q is None:
            answer = "Unknown question."
        else:
            answer = oracle_answer(q, turn, tools, dotted)
        return answer, test_id


_call_ids = iter(range(10**12))


def _message(answer) -> dict:
    if isinstance(answer, str):
        # No "tool_calls" key at all, as OpenAI and vLLM send it: bfcl's handler would read an
        # empty list as "no calls" and drop the text (memory answers are text).
        return {"role": "assistant", "content": answer}
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{next(_call_ids)}", "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}} for name, args in answer]}


# ---------------------------------------------------------------- HTTP (stdlib)

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.models: dict[str, dict] = {}

    def record(self, model: str, test_id: str, ambiguous: bool, failed: bool, body: dict | None = None):
        with self.lock:
            m = self.models.setdefault(model, {"requests": 0, "by_id": Counter(), "ambiguous": 0,
                                               "unmatched": 0, "injected_failures": 0, "params": Counter()})
            m["requests"] += 1
            # every request parameter but the content (sampling, max_tokens): what the client sent
            m["params"][json.dumps({k: v for k, v in (body or {}).items()
                                    if k not in ("prompt", "messages", "tools", "max_tokens")}, sort_keys=True)] += 1
            m.setdefault("max_tokens", []).append((body or {}).get("max_tokens"))
            m["by_id"][test_id] += 1
            m["ambiguous"] += ambiguous
            m["unmatched"] += test_id == "?"
            m["injected_failures"] += failed

    def snapshot(self) -> dict:
        with self.lock:
            return json.loads(json.dumps(self.models))


def make_server(oracle: Oracle, host: str, port: int, default_mode: str = "oracle",
                delay_s: float = 0.0, fail_first: bool = False, die_after: int | None = None,
                api_key: str | None = None) -> ThreadingHTTPServer:
    stats = Stats()
    arrived = itertools.count(1)
    seen: set[tuple] = set()
    seen_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if api_key is None or self.headers.get("Authorization") == f"Bearer {api_key}":
                return True
            self._send(401, {"error": {"message": "invalid API key", "code": 401}})
            return False

        def do_GET(self):
            if self.path not in ("/health", "/stats") and not self._authorized():
                return
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in MODES]})
            elif self.path == "/stats":
                self._send(200, stats.snapshot())
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path == "/reset":
                stats.reset()
                return self._send(200, {"status": "reset"})
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                return self._send(404, {"error": "not found"})
            if not self._authorized():
                return
            if die_after is not None and next(arrived) > die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # this request is never answered
            text = self.path == "/v1/completions"
            model = body.get("model", "")
            mode = model if model in MODES else default_mode
            key = f"{model} (completions)" if text else model  # /stats: one entry per endpoint
            try:
                message, test_id, ambiguous = (oracle.complete if text else oracle.reply)(mode, body)
            except Exception as exc:  # an oracle bug: say so rather than drop the connection
                stats.record(key, "!", False, False, body)
                return self._send(500, {"error": {"message": f"oracle: {exc!r}", "code": 500}})
            if delay_s:
                time.sleep(delay_s)
            step = (key, test_id, len(body.get("prompt") or body.get("messages", [])))
            with seen_lock:
                fail = fail_first and step not in seen
                seen.add(step)
            stats.record(key, test_id, ambiguous, fail, body)
            if fail:
                return self._send(503, {"error": {"message": "injected transient failure", "code": 503}})
            if text:
                return self._send(200, {
                    "id": f"cmpl-{next(_call_ids)}", "object": "text_completion", "created": int(time.time()),
                    "model": model, "choices": [{"index": 0, "text": message, "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
            self._send(200, {
                "id": f"chatcmpl-{next(_call_ids)}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=MODES, default="oracle")
    p.add_argument("--categories", default="full", help="full or comma-separated categories")
    p.add_argument("--per-category", type=int, default=None, help="index only the seeded quick ids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0, help="seconds added to every answer")
    p.add_argument("--fail-first", action="store_true", help="503 on the first try of each step")
    p.add_argument("--die-after", type=int, default=None, help="SIGKILL itself on chat request N+1")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer <key>")
    a = p.parse_args(argv)
    # bfcl-eval creates folders under BFCL_PROJECT_ROOT on import: keep them out of site-packages.
    os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-oracle-"))
    _, categories, k = spec.resolve(a.categories, a.per_category)
    ids = None
    if k:
        from bfcl_eval.utils import load_dataset_entry
        ids = {i for c in categories for i in spec.quick_ids(c, load_dataset_entry(c), k, a.seed)}
    server = make_server(Oracle(load_questions(categories, ids)), a.host, a.port, a.mode,
                         a.delay, a.fail_first, a.die_after, a.api_key)
    print(f"oracle server on http://{a.host}:{a.port}/v1 (mode {a.mode})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
