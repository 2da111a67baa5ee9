"""`make ui`: MLflow's own UI on 127.0.0.1 over the configured tracking store."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from experiments.core.config import ConfigError, compose


def ui_command(uri: str, host: str, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe), "server", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]


def ui_env() -> dict:
    # MLflow's job runner starts many workers (2-3 GB, ~30 s); the UI needs none of them.
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_ui(uri: str, host: str = "127.0.0.1", port: int = 5000, timeout_s: float = 120, log=None) -> subprocess.Popen:
    """Start the UI in the background and return once /health answers."""
    proc = subprocess.Popen(ui_command(uri, host, port), env=ui_env(), stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"mlflow UI not healthy on {host}:{port} after {timeout_s} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=int(os.environ.get("UI_PORT", 5000)))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides)
    except ConfigError as exc:
        print(f"[ui] error: {exc}", file=sys.stderr)
        return 2
    uri = str(cfg.tracking.uri)
    if uri.startswith(("http://", "https://")):
        print(f"[ui] runs are on a tracking server: open {uri} in a browser")
        return 0
    print(f"[ui] MLflow UI for {uri} on http://127.0.0.1:{args.port} (Ctrl-C to stop); "
          f"runs table: http://127.0.0.1:{args.port}/#/experiments")
    return subprocess.call(ui_command(uri, "127.0.0.1", args.port), env=ui_env())


if __name__ == "__main__":
    sys.exit(main())
