"""Section 4, Cost: training and inference cost from measured wall times and throughput, prices as config."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from experiments.report import pareto
from experiments.report.common import MISSING, code_path, fmt, image, markdown_table, run_accelerator, usd
from experiments.report.serving import capacity_level, nearest_level


def hourly_price(cost: dict, accelerator: str | None) -> tuple[float, str]:
    if accelerator == "cpu":
        return float(cost["cpu_usd_per_hour"]), "cost.cpu_usd_per_hour"
    return float(cost["gpu_usd_per_hour"]), "cost.gpu_usd_per_hour"


def devices(run: dict, accelerator: str | None) -> tuple[int, str]:
    """What a price per hour multiplies: GPUs (world size) on GPU profiles, machines (nodes) on cpu."""
    launch = run["info"].get("launch") or {}
    if accelerator == "cpu":
        n = int(launch.get("nnodes") or 1)
        return n, f"{n} machine{'s' if n != 1 else ''}"
    n = int(launch.get("world_size") or 1)
    return n, f"{n} GPU{'s' if n != 1 else ''}"


def training_costs(rows: Sequence[dict], cost: dict) -> pd.DataFrame:
    out = []
    for r in rows:
        wall = (r.get("metrics") or {}).get("wall_time_s")
        acc = run_accelerator(r)
        price, key = hourly_price(cost, acc)
        n, what = devices(r, acc)
        usd_total = wall / 3600 * price * n if wall is not None else None
        out.append({"run": f"`{r['id']}`", "method": r["info"].get("method", "?"), "wall time s": fmt(wall, 1),
                    "price": f"${price:.2f}/h ({key})", "devices": what,
                    "arithmetic": (f"{fmt(wall, 1)} s / 3600 × ${price:.2f}/h × {n}" if wall is not None else MISSING),
                    "cost": usd(usd_total)})
    return pd.DataFrame(out)


def inference_cost(level: dict, price: float, n_devices: int) -> dict:
    s = level["summary"]
    rps = s["throughput"]["requests_per_s"]
    tps = s["throughput"]["output_tokens_per_s"]
    per_req = None if not rps else 1e6 / rps / 3600 * price * n_devices
    per_tok = None if not tps else 1e6 / tps / 3600 * price * n_devices
    return {"req_per_s": rps, "out_tok_per_s": tps, "hours_per_1m_requests": (1e6 / rps / 3600) if rps else None,
            "usd_per_1m_requests": per_req, "hours_per_1m_tokens": (1e6 / tps / 3600) if tps else None,
            "usd_per_1m_output_tokens": per_tok}


def section(d: dict, plots: dict[str, Path]) -> list[str]:
    """Markdown lines of the Cost section (pure)."""
    cost, info = d["cost"], d["subject"]["info"]
    L = ["## 4. Cost\n"]
    add = L.append
    add(f"**Assumptions** (config, not quotes; `conf/cost/default.yaml`, override e.g. "
        f"`make report ARGS=\"cost.gpu_usd_per_hour=2.50\"`): GPU ${float(cost['gpu_usd_per_hour']):.2f} per GPU-hour "
        f"(`cost.gpu_usd_per_hour`, GPU profiles), CPU machine ${float(cost['cpu_usd_per_hour']):.2f} per hour "
        f"(`cost.cpu_usd_per_hour`, cpu profile).\n")
    add("### Training\n")
    with_metrics = [r for r in d["rows"] if r.get("metrics")]
    if with_metrics:
        add(markdown_table(training_costs(with_metrics, cost)))
        add("cost = wall time (`wall_time_s` of each run's train_metrics.json) / 3600 × price per hour × "
            "devices (GPUs = world size from run.json on GPU profiles, machines on cpu).\n")
    else:
        add(f"No training wall time: `make train METHOD={info.get('method')}` writes it.\n")
    add("### Inference\n")
    L.extend(inference_lines(d))
    if len(d["rows"]) > 1:     # a comparison: accuracy against serving cost, one point per run
        price, key = hourly_price(cost, run_accelerator(d["subject"]))
        metric = d.get("pareto_metric", "Overall_Acc")
        img = image(d, plots, "pareto", "BFCL accuracy vs throughput and cost") if "pareto" in plots else None
        L.extend(pareto.lines(pareto.points(d["rows"], metric, price), metric, key, img))
    return L


def inference_lines(d: dict) -> list[str]:
    sid, kind, bench, cost, subject = d["subject"]["id"], d["kind"], d["bench"], d["cost"], d["subject"]
    if not bench or not bench["levels"]:
        return [f"No throughput measured for `{sid}`: `make bench RUN={sid} MODEL={kind}` measures the throughput "
                f"this section prices.\n"]
    level, note = capacity_level(bench)
    if level is None:   # no capacity search: the fixed concurrency of the cost config
        level, note = nearest_level(bench["levels"], int(cost["inference_concurrency"]))
    on_cpu = run_accelerator(subject) == "cpu"
    price, key = hourly_price(cost, run_accelerator(subject))
    n = 1 if on_cpu else (d["serve"]["tensor_parallel_size"] * d["serve"]["pipeline_parallel_size"]
                          * d["serve"]["data_parallel_size"])
    what = f"{n} machine" if on_cpu else f"{n} GPU{'s' if n != 1 else ''}"
    c = inference_cost(level, price, n)
    L = [f"Throughput of level `{level['label']}`: {note}. Price: ${price:.2f}/h (`{key}`) × {what} "
         f"(serving GPUs = `serve.tensor_parallel_size` × `pipeline_parallel_size` × `data_parallel_size` of the "
         f"config). One server running flat out at the measured rate, nothing else billed.\n"]
    add = L.append
    rps, tps = c["req_per_s"], c["out_tok_per_s"]
    add("| quantity | arithmetic | value |\n|---:|---:|---:|")
    add(f"| successful req/s | `throughput.requests_per_s` of {code_path(d, bench['dir'] / ('summary_' + level['label'] + '.json'))} | {fmt(rps, 3)} |")
    if rps:
        add(f"| hours per 1M requests | 1000000 / {fmt(rps, 3)} / 3600 | {fmt(c['hours_per_1m_requests'], 3)} |")
        add(f"| **cost per 1M requests** | {fmt(c['hours_per_1m_requests'], 3)} h × ${price:.2f}/h × {n} | **{usd(c['usd_per_1m_requests'])}** |")
    add(f"| output tokens/s | `throughput.output_tokens_per_s` of the same file | {fmt(tps, 1)} |")
    if tps:
        add(f"| hours per 1M output tokens | 1000000 / {fmt(tps, 1)} / 3600 | {fmt(c['hours_per_1m_tokens'], 4)} |")
        add(f"| cost per 1M output tokens | {fmt(c['hours_per_1m_tokens'], 4)} h × ${price:.2f}/h × {n} | {usd(c['usd_per_1m_output_tokens'])} |")
    add("")
    return L
