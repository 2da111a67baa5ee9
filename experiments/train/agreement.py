"""What training records so later stages can prove they agree with it: the fingerprints of the
template and tokenizer it used (run.json `fingerprints`, MLflow tags `fp.*`) and the parser round
trip of its data (data_report.json `parser_roundtrip`)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from experiments.core import envs, fingerprint, runs
from experiments.data import toolace

TAGGED = ("chat_template", "tokenizer", "special_tokens", "first_row")


class RoundTripError(RuntimeError):
    """data.require_roundtrip=true and some training targets do not parse back."""


def _template_file(cfg: DictConfig) -> str | None:
    """A chat template file when Axolotl renders with another template than the model's own."""
    if cfg.axolotl.get("chat_template") == "jinja":
        f = tempfile.NamedTemporaryFile("w", suffix=".jinja", prefix="chat-template-", delete=False)
        f.write(str(cfg.axolotl.chat_template_jinja))
        f.close()
        return f.name
    return None


def parser_roundtrip(cfg: DictConfig, data_dir: Path) -> dict:
    """Run experiments.data.roundtrip in the serve env over data/train.jsonl (no server)."""
    out = data_dir / "roundtrip.json"
    template = _template_file(cfg)
    if template is None and cfg.axolotl.get("chat_template") not in (None, "tokenizer_default"):
        return {"skipped": f"axolotl.chat_template={cfg.axolotl.chat_template}: not the model's own template"}
    cmd = [str(envs.python("serve", Path(cfg.paths.venv))), "-m", "experiments.data.roundtrip",
           "--data", str(data_dir / "train.jsonl"), "--model", str(cfg.model.path),
           "--parser", str(cfg.serve.tool_call_parser), "--out", str(out)] + (["--template-file", template] if template else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=envs.subprocess_env({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}))
    if template:
        Path(template).unlink(missing_ok=True)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"parser round trip failed to run (exit {proc.returncode}): {tail}")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def check_roundtrip(cfg: DictConfig, data_dir: Path, report: dict) -> dict:
    """Add the round trip to data_report.json; warn on failures, or raise with data.require_roundtrip."""
    rt = parser_roundtrip(cfg, data_dir)
    report = {**report, "parser_roundtrip": rt}
    runs.write_json_atomic(data_dir / "data_report.json", report)
    failed = rt.get("failed_rows", 0)
    if failed:
        first = rt["examples"][0]
        msg = (f"{failed} of {rt['rows_with_calls']} rows with tool calls do not parse back through vLLM's "
               f"{rt['parser']} parser; first: row {first['row']}: {first['problems'][0]} "
               f"(all in {data_dir / 'data_report.json'})")
        if cfg.data.get("require_roundtrip"):
            raise RoundTripError(f"data.require_roundtrip=true: {msg}")
        print(f"[train] warning: {msg}", file=sys.stderr, flush=True)
    elif "skipped" not in rt:
        print(f"[train] parser round trip: {rt['turns']} call turns of {rt['rows_with_calls']} rows read back "
              f"identically by vLLM's {rt['parser']} parser", flush=True)
    return report


def training_fingerprints(run_dir: Path, model_path: str) -> dict:
    """Digests of what training used: Axolotl saves the tokenizer with the chat template it applied
    into its output_dir (adapter/); the base folder stands in when that is missing."""
    folder = run_dir / "adapter" if (run_dir / "adapter" / "tokenizer_config.json").exists() else Path(model_path)
    first = json.loads((run_dir / "data" / "train.jsonl").read_text().splitlines()[0])
    return fingerprint.fingerprints(folder, toolace.to_native(first))


def record_fingerprints(run_dir: Path, model_path: str, tracker) -> dict:
    fp = training_fingerprints(run_dir, model_path)
    runs.update_run_json(run_dir, fingerprints=fp)
    tracker.set_tags({f"fp.{k}": fp[k] for k in TAGGED if k in fp})
    return fp
