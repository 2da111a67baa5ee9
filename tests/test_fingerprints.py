"""Fingerprints through the chain (train -> merge -> serve -> eval/bench -> report) and the parser
round trip of the training data. No vLLM server starts here: a refused `make serve` stops before it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, hydra_args, make, read_json
from experiments.core import fingerprint
from experiments.core.config import compose
from experiments.data import roundtrip, toolace
from experiments.train import agreement

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def tiny_folder(path: Path, template: str = TEMPLATE, trim_offsets: bool = False, vocab: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok = {"added_tokens": [{"id": 3, "content": "<|im_end|>", "special": True}], "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets},
           "post_processor": None, "model": {"type": "BPE", "vocab": vocab or {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]],
                                             "continuing_subword_prefix": None}}
    (path / "tokenizer.json").write_text(json.dumps(tok))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
    return path


def test_a_resave_keeps_the_digests_a_real_change_does_not(tmp_path):
    a = fingerprint.fingerprints(tiny_folder(tmp_path / "a"))
    # What transformers' save_pretrained rewrites: offset flags, "" for null affixes, key order.
    resaved = tiny_folder(tmp_path / "b", trim_offsets=True)
    tok = json.loads((resaved / "tokenizer.json").read_text())
    tok["model"]["continuing_subword_prefix"] = ""
    (resaved / "tokenizer.json").write_text(json.dumps(dict(reversed(tok.items())), indent=2))
    b = fingerprint.fingerprints(resaved)
    assert (a["chat_template"], a["tokenizer"], a["special_tokens"]) == (b["chat_template"], b["tokenizer"], b["special_tokens"])
    assert fingerprint.mismatches(a, b) == []
    c = fingerprint.fingerprints(tiny_folder(tmp_path / "c", vocab={"a": 0, "b": 2, "ab": 1}))
    assert c["tokenizer"] != a["tokenizer"]
    d = fingerprint.fingerprints(tiny_folder(tmp_path / "d", template=TEMPLATE.replace("\n", " ")))
    problems = fingerprint.mismatches(a, d)
    assert len(problems) == 1 and problems[0].startswith(f"chat_template digest {d['chat_template'][:12]}")
    assert str(tmp_path / "d" / "tokenizer_config.json") in problems[0] and a["chat_template"][:12] in problems[0]
    # chat_template.jinja beside the tokenizer wins, as in transformers
    (tmp_path / "a" / "chat_template.jinja").write_text("other")
    assert fingerprint.chat_template(tmp_path / "a") == ("other", str(tmp_path / "a" / "chat_template.jinja"))
    with pytest.raises(fingerprint.FingerprintError, match="no chat template"):
        fingerprint.chat_template(tmp_path)


def test_training_merge_record_the_digests(merged_run):
    info = read_json(merged_run / "run.json")
    fp = info["fingerprints"]
    assert set(agreement.TAGGED) <= set(fp) and all(len(fp[k]) == 64 for k in agreement.TAGGED)
    first = toolace.to_native(json.loads((merged_run / "data" / "train.jsonl").read_text().splitlines()[0]))
    text, _ = fingerprint.chat_template(merged_run / "adapter")
    assert fp["first_row"] == fingerprint.sha256(fingerprint.render(text, first["messages"], first["tools"],
                                                                    **fingerprint.template_kwargs(merged_run / "adapter")))
    tags = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"]).get_run(info["mlflow"]["train_run_id"]).data.tags
    assert {k: tags[f"fp.{k}"] for k in agreement.TAGGED} == {k: fp[k] for k in agreement.TAGGED}
    merged = info["merge"]["fingerprints"]
    assert (merged["chat_template"], merged["tokenizer"]) == (fp["chat_template"], fp["tokenizer"])
    assert merged["weights"] == fingerprint.weights_digest(merged_run / "merged") == tags["fp.merged_weights"]


def test_serve_refuses_an_altered_template_naming_file_and_digests(merged_run, results_dir):
    copy = results_dir / "fp-altered"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    info = {**read_json(merged_run / "run.json"), "run_id": copy.name}
    (copy / "run.json").write_text(json.dumps(info))
    shutil.copytree(merged_run / "merged", copy / "merged")
    cfg_path = copy / "merged" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = cfg["chat_template"].replace("# Tools", "# Functions")  # a template that drifted
    cfg_path.write_text(json.dumps(cfg))
    proc = make("serve", f"RUN={copy.name}", "MODEL=merged", hydra_args("serve.port=1"), check=False)
    assert proc.returncode == 2
    assert str(cfg_path) in proc.stderr and info["fingerprints"]["chat_template_file"] in proc.stderr
    assert info["fingerprints"]["chat_template"][:12] in proc.stderr
    assert fingerprint.fingerprints(copy / "merged")["chat_template"][:12] in proc.stderr
    assert "serve.allow_template_mismatch=true" in proc.stderr
    assert not (copy / "serve" / "merged" / "server.pid").exists()


def planted_rows() -> list[dict]:
    """The shipped sample, converted, plus one row whose call arguments are not valid JSON."""
    raw = toolace.load_raw(path=str(REPO / "data" / "toolace_sample.jsonl"))
    rows, _ = toolace.convert_rows(raw)
    bad = json.loads(json.dumps(next(r for r in rows if any(m.get("tool_calls") for m in r["messages"]))))
    call = next(m for m in bad["messages"] if m.get("tool_calls"))["tool_calls"][0]
    call["function"]["arguments"] = '{"city": "Paris",}'  # trailing comma
    return rows + [bad]


def test_round_trip_reads_back_the_sample_and_catches_a_planted_row(tmp_path, capsys):
    rows = planted_rows()
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose(["profile=cpu", f"paths.venv={REPO / '.venv'}"])
    report = agreement.check_roundtrip(cfg, tmp_path, {"rows_out": len(rows)})
    rt = report["parser_roundtrip"]
    assert rt["parser"] == "hermes" and rt["turns"] > rt["rows_with_calls"] > 100  # parallel calls included
    assert rt["failed_rows"] == 1 and rt["examples"][0]["row"] == len(rows) - 1
    assert "not a JSON object" in rt["examples"][0]["problems"][0]
    assert read_json(tmp_path / "data_report.json")["parser_roundtrip"] == rt
    assert "1 of" in capsys.readouterr().err
    strict = compose(["profile=cpu", f"paths.venv={REPO / '.venv'}", "data.require_roundtrip=true"])
    with pytest.raises(agreement.RoundTripError, match=f"row {len(rows) - 1}"):
        agreement.check_roundtrip(strict, tmp_path, {"rows_out": len(rows)})


def test_compare_calls_catches_names_counts_and_arguments():
    e = [{"name": "f", "arguments": {"x": 1}}]
    assert roundtrip.compare_calls(e, [{"name": "f", "arguments": {"x": 1}}]) is None
    assert "read 0" in roundtrip.compare_calls(e, [])
    assert "name 'f' read back as 'g'" in roundtrip.compare_calls(e, [{"name": "g", "arguments": {"x": 1}}])
    assert "read back as {'x': 2}" in roundtrip.compare_calls(e, [{"name": "f", "arguments": {"x": 2}}])


def test_report_shows_digests_and_flags_a_mismatch_in_red():
    from experiments.report import agreement as section

    train = {"chat_template": "a" * 64, "tokenizer": "b" * 64, "special_tokens": "c" * 64, "first_row": "d" * 64,
             "chat_template_file": "run/adapter/chat_template.jinja"}
    d = {"agreement": {"train": train, "merge": {**train, "weights": "e" * 64},
                       "stages": {"eval (merged)": {**train, "chat_template": "f" * 64, "chat_template_file": "x/tokenizer_config.json"},
                                  "bench (merged)": train},
                       "roundtrip": {"parser": "hermes", "turns": 3, "rows_with_calls": 2, "failed_rows": 1,
                                     "examples": [{"row": 7, "problems": ["turn 2: arguments are not a JSON object"]}]},
                       "agree": None, "agree_skipped": "agree.enabled=false"}}
    text = "\n".join(section.section(d, {}))
    assert "`aaaaaaaaaaaa`" in text and "`eeeeeeeeeeee`" in text and "`x/tokenizer_config.json`" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert sum('<span style="color:red">**MISMATCH: chat_template**</span>' in ln for ln in lines) == 1
    assert any("eval (merged)" in ln and "MISMATCH" in ln for ln in lines)
    assert "1 rows do not read back" in text and "row 7: turn 2" in text
    assert "**skipped** (agree.enabled=false)" in text
    d["agreement"]["stages"] = {}
    d["agreement"]["agree_skipped"] = None
    d["agreement"]["agree"] = {"loss": {"kind": "merged", "served_eval_loss": 1.0, "trained_eval_loss": 1.5, "tokens": 10,
                                        "rows": 2, "difference": -0.5, "tolerance": 0.01, "tolerance_basis": "b", "ok": False,
                                        "first_difference": None}, "adapter_vs_merged": {"skipped": "DoRA"}}
    text = "\n".join(section.section(d, {}))
    assert "MISMATCH" not in text and '<span style="color:red">**DISAGREE**</span>' in text and "skipped (DoRA)" in text
