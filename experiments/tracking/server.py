"""`make tracking-server` / `make tracking-stop`: a team-style MLflow tracking server on this machine.

PostgreSQL (its own data folder under results/, bound to 127.0.0.1) holds runs, params and
metrics; an MLflow server in front of it stores artifacts under results/ and proxies their
uploads (`--serve-artifacts`), so clients need nothing but the HTTP URI (tracking=postgres).

Everything lives in `tracking.server.dir` (default results/tracking-server/):
  postgres/data  postgres/postgres.log  postgres/.s.PGSQL.<port>   (owned by the postgres user)
  artifacts/     mlflow.log             server.json (PIDs, ports, URIs, start-up timings)
  credentials.env (mode 600, only when the environment gives no TRACKING_DB_PASSWORD)

Traps handled here (measured, see findings.md): PostgreSQL refuses to run as root, so as root
initdb/pg_ctl/psql run as the `postgres` user in a folder it owns; SQLAlchemy's plain
`postgresql://` wants psycopg 3, so the driver is named (`postgresql+psycopg2://`); MLflow's
job runner starts many heavy workers, so it is switched off and one worker serves.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from experiments.core import runs
from experiments.core.config import ConfigError, compose
from experiments.core.procs import group_members, healthy, port_free, process_alive, stop_group

STATE = "server.json"
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")  # role/database names we interpolate into SQL


class ServerError(RuntimeError):
    """The tracking server could not be started or stopped; the message says why (and where the log is)."""


class Layout:
    def __init__(self, server: DictConfig):
        self.dir = Path(server.dir).resolve()
        self.pg_dir = self.dir / "postgres"          # owned by the PostgreSQL user, mode 700
        self.pg_data = self.pg_dir / "data"
        self.pg_log = self.pg_dir / "postgres.log"
        self.artifacts = self.dir / "artifacts"
        self.mlflow_log = self.dir / "mlflow.log"
        self.state = self.dir / STATE


# --- PostgreSQL ------------------------------------------------------------------------------

def pg_bin(server: DictConfig, name: str) -> str:
    if server.postgres.get("bin"):
        return str(Path(server.postgres.bin) / name)
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise ServerError(f"no PostgreSQL {name} under /usr/lib/postgresql/*/bin: install it "
                          "(apt-get install postgresql) or set tracking.server.postgres.bin")
    return str(found[-1])


def pg_user() -> str:
    """The OS user PostgreSQL runs as: `postgres` when we are root (initdb refuses root), else us."""
    return "postgres" if os.geteuid() == 0 else getpass.getuser()


def as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def run_pg(cmd: list[str], lay: Layout, *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    # cwd: a folder the postgres user may enter (it cannot read root's cwd everywhere).
    proc = subprocess.run(as_pg_user(cmd), cwd=lay.pg_dir, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ServerError(f"{shlex.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def prepare_pg_dir(lay: Layout) -> None:
    lay.pg_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(lay.pg_dir, pw.pw_uid, pw.pw_gid)
    os.chmod(lay.pg_dir, 0o700)
    # Every parent must be searchable by the postgres user (pytest's /tmp/pytest-of-root is 700, say).
    if subprocess.run(as_pg_user(["test", "-w", str(lay.pg_dir)]), capture_output=True).returncode != 0:
        blocked = next((p for p in reversed(lay.pg_dir.parents) if not os.stat(p).st_mode & 0o001), lay.pg_dir)
        raise ServerError(f"the {pg_user()} user cannot reach {lay.pg_dir} ({blocked} is not searchable by others); "
                          "choose another folder: tracking.server.dir=...")


def pg_running(server: DictConfig, lay: Layout) -> bool:
    if not (lay.pg_data / "postmaster.pid").exists():
        return False
    return run_pg([pg_bin(server, "pg_ctl"), "status", "-D", str(lay.pg_data)], lay, check=False).returncode == 0


def pg_pid(lay: Layout) -> int | None:
    try:
        return int((lay.pg_data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def start_postgres(server: DictConfig, lay: Layout, user: str, password: str) -> bool:
    """initdb once, start, create the MLflow role and database. Returns True if it was started now."""
    prepare_pg_dir(lay)
    port = int(server.postgres.port)
    sock = lay.pg_dir / f".s.PGSQL.{port}"
    if len(str(sock)) > 100:  # a Unix socket path is limited to ~107 bytes
        raise ServerError(f"{lay.pg_dir} is too deep for PostgreSQL's socket; choose a shorter tracking.server.dir")
    if not (lay.pg_data / "PG_VERSION").exists():
        # Local socket: peer (only this OS user, in a 700 folder); TCP: passwords.
        run_pg([pg_bin(server, "initdb"), "-D", str(lay.pg_data), "-E", "UTF8", "--no-locale",
                "--auth-local=peer", "--auth-host=scram-sha-256"], lay)
    started = False
    if not pg_running(server, lay):
        if not port_free("127.0.0.1", port):
            raise ServerError(f"port {port} (tracking.server.postgres.port) is already in use")
        opts = shlex.join(["-c", "listen_addresses=127.0.0.1", "-p", str(port), "-k", str(lay.pg_dir)])
        run_pg([pg_bin(server, "pg_ctl"), "start", "-D", str(lay.pg_data), "-l", str(lay.pg_log),
                "-w", "-t", "60", "-o", opts], lay)
        started = True
    # Idempotent: the role's password follows the credentials on every start.
    db = str(server.postgres.database)
    psql = [pg_bin(server, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(lay.pg_dir), "-p", str(port), "-d", "postgres"]
    literal = "'" + password.replace("'", "''") + "'"
    run_pg(psql, lay, input=(  # on stdin, so the password is never in a process list
        f"SELECT 'CREATE ROLE {user} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') \\gexec\n"
        f"ALTER ROLE {user} WITH LOGIN PASSWORD {literal};\n"
        f"SELECT 'CREATE DATABASE {db} OWNER {user}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}') \\gexec\n"))
    return started


def stop_postgres(server: DictConfig, lay: Layout) -> bool:
    if not pg_running(server, lay):
        return False
    pid = pg_pid(lay)
    run_pg([pg_bin(server, "pg_ctl"), "stop", "-D", str(lay.pg_data), "-m", "fast", "-w", "-t", "60"], lay)
    # pg_ctl returns once postmaster.pid is gone, a moment before the process itself is.
    deadline = time.time() + 10
    while pid and process_alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return True


# --- credentials ------------------------------------------------------------------------------

def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def credentials(server: DictConfig) -> tuple[str, str]:
    """(user, password) for MLflow's database login: the environment first, then the git-ignored
    credentials file, which is created with a random password the first time."""
    path = Path(server.credentials)
    stored = read_env_file(path) if path.exists() else {}
    user = os.environ.get("TRACKING_DB_USER") or stored.get("TRACKING_DB_USER") or "mlflow"
    password = os.environ.get("TRACKING_DB_PASSWORD") or stored.get("TRACKING_DB_PASSWORD")
    if not _NAME_RE.match(user):
        raise ServerError(f"TRACKING_DB_USER={user!r}: use lower-case letters, digits and '_'")
    if not password:
        password = secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# MLflow's PostgreSQL login for `make tracking-server` (generated; keep it out of git)\n"
                    f"TRACKING_DB_USER={user}\nTRACKING_DB_PASSWORD={password}\n")
        print(f"[tracking-server] generated a database password in {path}")
    return user, password


# --- MLflow -----------------------------------------------------------------------------------

def local_url(server: DictConfig) -> str:
    host = "127.0.0.1" if str(server.host) in ("0.0.0.0", "::") else str(server.host)
    return f"http://{host}:{int(server.port)}"


def is_our_mlflow(pid: int, port: int) -> bool:
    """The recorded PID is still the MLflow server we started (not a recycled PID)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mlflow" in cmd and b"server" in cmd and str(port).encode() in cmd


def start_mlflow(server: DictConfig, lay: Layout, user: str, password: str) -> int:
    port, url = int(server.port), local_url(server)
    if not port_free(str(server.host), port):
        raise ServerError(f"port {port} (tracking.server.port) is already in use; "
                          "`make tracking-stop`, or choose tracking.server.port=...")
    lay.artifacts.mkdir(parents=True, exist_ok=True)
    backend = f"postgresql+psycopg2://{user}@127.0.0.1:{int(server.postgres.port)}/{server.postgres.database}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--host", str(server.host), "--port", str(port), "--workers", "1",
           "--serve-artifacts", "--artifacts-destination", str(lay.artifacts),
           *[str(a) for a in server.get("extra_args") or []]]
    if server.get("allowed_hosts"):
        # MLflow's list replaces its defaults: keep loopback, or our own health check gets 403.
        cmd += ["--allowed-hosts", f"{server.allowed_hosts},127.0.0.1:{port},localhost:{port}"]
    env = {**os.environ,
           "PGPASSWORD": password,  # libpq reads it: the password stays out of argv and the logs
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(lay.mlflow_log, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(cmd)}\n".encode())
        log.flush()
        # Own session: `make` may exit; stop kills exactly this process group.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=lay.dir, env=env, start_new_session=True)
    deadline = time.time() + float(server.start_timeout_s)
    while not healthy(url):
        if proc.poll() is not None or time.time() > deadline:
            why = f"exited {proc.returncode}" if proc.returncode is not None else f"not healthy after {server.start_timeout_s} s"
            stop_group(proc.pid)
            tail = "".join(lay.mlflow_log.read_text(errors="replace").splitlines(True)[-25:])
            raise ServerError(f"MLflow server {why}; log {lay.mlflow_log}:\n{tail}")
        time.sleep(0.5)
    return proc.pid


# --- start / stop / status ------------------------------------------------------------------

def read_state(lay: Layout) -> dict:
    return json.loads(lay.state.read_text()) if lay.state.exists() else {}


def start(cfg: DictConfig) -> dict:
    server = cfg.tracking.server
    lay = Layout(server)
    url = local_url(server)
    state = read_state(lay)
    pid = state.get("mlflow", {}).get("pid")
    if pid and is_our_mlflow(pid, int(server.port)) and healthy(url) and pg_running(server, lay):
        print(f"[tracking-server] already running: {url} (MLflow PID {pid}, PostgreSQL PID {pg_pid(lay)})")
        return state
    lay.dir.mkdir(parents=True, exist_ok=True)
    user, password = credentials(server)

    t0 = time.time()
    pg_started = start_postgres(server, lay, user, password)
    t1 = time.time()
    try:
        mlflow_pid = start_mlflow(server, lay, user, password)
    except BaseException:
        if pg_started:  # leave nothing of this attempt running
            stop_postgres(server, lay)
        raise
    t2 = time.time()
    state = {
        "uri": url, "ui": url + "/#/experiments", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mlflow": {"pid": mlflow_pid, "pgid": mlflow_pid, "port": int(server.port), "host": str(server.host),
                   "log": str(lay.mlflow_log), "artifacts": str(lay.artifacts)},
        "postgres": {"pid": pg_pid(lay), "port": int(server.postgres.port), "data": str(lay.pg_data),
                     "log": str(lay.pg_log), "database": str(server.postgres.database), "user": user},
        "timings_s": {"postgres": round(t1 - t0, 2), "mlflow": round(t2 - t1, 2)},
    }
    runs.write_json_atomic(lay.state, state)
    print(f"[tracking-server] PostgreSQL PID {state['postgres']['pid']} on 127.0.0.1:{server.postgres.port} "
          f"({state['timings_s']['postgres']} s), data {lay.pg_data}")
    print(f"[tracking-server] MLflow PID {mlflow_pid} on {url} ({state['timings_s']['mlflow']} s), "
          f"artifacts {lay.artifacts}, log {lay.mlflow_log}")
    print(f"[tracking-server] UI: {state['ui']}   train against it: make train TRACKING=postgres   stop: make tracking-stop")
    return state


def stop(cfg: DictConfig) -> None:
    server = cfg.tracking.server
    lay = Layout(server)
    state = read_state(lay)
    pid = state.get("mlflow", {}).get("pid")
    if pid and (is_our_mlflow(pid, int(server.port)) or group_members(pid)):
        stop_group(pid)
        print(f"[tracking-stop] MLflow server (PID {pid}) stopped")
    else:
        print(f"[tracking-stop] no MLflow server of ours running ({lay.state})")
    pgpid = pg_pid(lay)
    if stop_postgres(server, lay):
        print(f"[tracking-stop] PostgreSQL (PID {pgpid}) stopped; data kept in {lay.pg_data}")
    else:
        print(f"[tracking-stop] no PostgreSQL running on {lay.pg_data}")
    if state:
        runs.write_json_atomic(lay.state, {**state, "stopped": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def status(cfg: DictConfig) -> int:
    server = cfg.tracking.server
    lay = Layout(server)
    state = read_state(lay)
    up_ml, up_pg = healthy(local_url(server)), pg_running(server, lay)
    print(f"[tracking-server] MLflow {local_url(server)}: {'healthy' if up_ml else 'down'}; "
          f"PostgreSQL {lay.pg_data}: {'running' if up_pg else 'down'}")
    if state:
        print(json.dumps(state, indent=2))
    return 0 if up_ml and up_pg else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Start/stop this machine's MLflow tracking server (PostgreSQL backend)")
    ap.add_argument("action", choices=("start", "stop", "status"))
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (tracking.server.port=..., tracking.server.dir=...)")
    args = ap.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if not any(o.startswith("tracking=") for o in overrides):
        overrides.append("tracking=postgres")
    try:
        cfg = compose(overrides)
        if "server" not in cfg.tracking:
            raise ServerError(f"tracking={cfg.tracking.name} describes no server to run; use tracking=postgres")
        if args.action == "start":
            start(cfg)
        elif args.action == "stop":
            stop(cfg)
        else:
            return status(cfg)
    except (ConfigError, ServerError) as exc:
        print(f"[tracking-server] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
