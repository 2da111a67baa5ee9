"""Local server processes (vLLM, MLflow): is a port free, does /health answer, is a PID alive,
stop a process group. Shared by experiments.serve.server and experiments.tracking.server."""
from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT after a stop is no conflict
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def bearer(api_key: str | None) -> dict:
    """The Authorization header of an OpenAI-compatible server's key (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def healthy(root_url: str, timeout_s: float = 2.0, headers: dict | None = None) -> bool:
    """GET <root_url>/health answers 200 (headers: e.g. the Authorization a server wants)."""
    try:
        request = urllib.request.Request(root_url + "/health", headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def process_alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live PIDs whose process group is pgid (servers start their workers as children)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def stop_group(pgid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the group, wait for every member, SIGKILL what is left after the timeout."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.waitpid(-pgid, os.WNOHANG)  # reap if it is our child (not across make calls)
            except ChildProcessError:
                pass
            if not group_members(pgid):
                return
            time.sleep(0.2)
