"""The numbers scripts/gpu_smoke.sh prints: training speed as MFU, serving decode speed against the
memory-bandwidth roofline. Pure arithmetic first, then reading one run folder.

    python -m experiments.report.gpu_smoke --run results/<run> --gpu "NVIDIA H100 80GB HBM3"

MFU = 6 x parameters x training tokens/s / peak dense bf16 FLOP/s (the usual 6N per token for
forward + backward; QLoRA skips weight gradients of the frozen base, gradient checkpointing adds a
forward again, so read it as a convention, not a measurement of FLOPs done).
Decode roofline: each decode step reads every weight once, so a step takes at least
weight bytes / HBM bandwidth; the ratio is that bound over the measured time per output token
(median TPOT). KV-cache reads are left out, so the bound is optimistic at high concurrency.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.core import runs

# Dense bf16 tensor FLOP/s and HBM bytes/s from NVIDIA's data sheets, matched by name, most
# specific first (nvidia-smi names: "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200").
GPU_SPECS = [
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100 NVL", 835e12, 3.9e12),
    ("H100", 989e12, 3.35e12),      # SXM5
    ("H200", 989e12, 4.8e12),
    ("A100-SXM4-80GB", 312e12, 2.039e12),
    ("A100", 312e12, 1.555e12),
    ("L40S", 362e12, 0.864e12),
]


def gpu_spec(name: str) -> tuple[float, float]:
    """(peak bf16 FLOP/s, HBM bytes/s) of a GPU by its name; ValueError naming the known ones."""
    for key, flops, bandwidth in GPU_SPECS:
        if key in name:
            return flops, bandwidth
    raise ValueError(f"no data-sheet numbers for GPU {name!r}; known: {', '.join(k for k, _, _ in GPU_SPECS)}"
                     " (pass --peak-tflops and --hbm-tbps)")


def mfu(params: float, tokens_per_s: float, peak_flops: float) -> float:
    return 6 * params * tokens_per_s / peak_flops


def decode_step_floor_ms(weight_bytes: float, hbm_bytes_per_s: float) -> float:
    """The fastest a decode step can be if it only has to read the weights once."""
    return 1000 * weight_bytes / hbm_bytes_per_s


def roofline_ratio(tpot_ms: float, weight_bytes: float, hbm_bytes_per_s: float) -> float:
    """Share of the memory-bandwidth bound reached: 1.0 = every step as fast as reading the weights."""
    return decode_step_floor_ms(weight_bytes, hbm_bytes_per_s) / tpot_ms


def summarize(train: dict, params: int, weight_bytes: float, levels: list[dict], spec: tuple[float, float]) -> dict:
    """train_metrics.json + the bench level summaries -> the smoke's numbers."""
    peak, bandwidth = spec
    tps = train.get("tokens_per_s")
    out = {
        "params": params, "weight_bytes": weight_bytes, "peak_bf16_flops": peak, "hbm_bytes_per_s": bandwidth,
        "train_tokens_per_s": tps, "mfu": round(mfu(params, tps, peak), 4) if tps else None,
        "peak_gpu_mem_gib": train.get("peak_gpu_mem_gib"), "train_steps": train.get("steps"),
        "decode_step_floor_ms": round(decode_step_floor_ms(weight_bytes, bandwidth), 3), "serve": [],
    }
    for s in sorted(levels, key=lambda s: s["concurrency"] or 0):
        tpot = (s.get("tpot_ms") or {}).get("median")
        out["serve"].append({
            "concurrency": s["concurrency"], "output_tokens_per_s": round(s["throughput"]["output_tokens_per_s"], 1),
            "per_stream_tokens_per_s": round(1000 / tpot, 1) if tpot else None, "tpot_median_ms": tpot,
            "roofline_ratio": round(roofline_ratio(tpot, weight_bytes, bandwidth), 3) if tpot else None,
            "errors": s["requests"]["failed"]})
    return out


def render(summary: dict, gpu: str) -> str:
    s = summary
    lines = [f"GPU smoke on {gpu}: {s['params'] / 1e9:.2f}B parameters",
             f"  train: {s['train_tokens_per_s']} tokens/s over {s['train_steps']} steps, "
             f"MFU {s['mfu']:.1%} (6 x params x tokens/s / {s['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16)"
             if s["mfu"] is not None else "  train: no tokens/s in train_metrics.json",
             f"  peak GPU memory (training): {s['peak_gpu_mem_gib']} GiB",
             f"  serve: decode floor {s['decode_step_floor_ms']} ms/step "
             f"({s['weight_bytes'] / 1e9:.1f} GB of weights / {s['hbm_bytes_per_s'] / 1e12:.2f} TB/s)"]
    for lv in s["serve"]:
        lines.append(f"    concurrency {lv['concurrency']:>3}: {lv['output_tokens_per_s']:>8} output tok/s, "
                     f"{lv['per_stream_tokens_per_s']} tok/s per stream (TPOT {lv['tpot_median_ms']} ms), "
                     f"{lv['roofline_ratio']:.0%} of the roofline, {lv['errors']} errors")
    return "\n".join(lines)


# --- one run folder ---------------------------------------------------------------------------

def latest_bench(run_dir: Path, kind: str = "merged") -> list[dict]:
    done = [d for d in sorted((run_dir / "bench" / kind).glob("*/bench.json")) if runs.read_json(d).get("status") == "done"]
    if not done:
        raise FileNotFoundError(f"{run_dir}/bench/{kind}: no finished `make bench`")
    return [runs.read_json(p) for p in sorted(done[-1].parent.glob("summary_*.json"))]


def model_size(model_dir: Path) -> tuple[int, float]:
    """(parameters, bytes as served): counted from the safetensors headers, dtype from their entries."""
    from safetensors import safe_open  # in every env that has torch

    params, nbytes = 0, 0.0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                sl = st.get_slice(name)
                n = 1
                for d in sl.get_shape():
                    n *= d
                params += n
                nbytes += n * {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1}.get(sl.get_dtype(), 2)
    if not params:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors")
    return params, nbytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--gpu", required=True, help="the GPU's name as nvidia-smi prints it")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--hbm-tbps", type=float, default=None)
    args = ap.parse_args(argv)
    try:
        spec = (args.peak_tflops * 1e12, args.hbm_tbps * 1e12) if args.peak_tflops and args.hbm_tbps else gpu_spec(args.gpu)
        params, weight_bytes = model_size(args.run / "merged")
        summary = summarize(runs.read_json(args.run / "train_metrics.json"), params, weight_bytes,
                            latest_bench(args.run), spec)
    except (ValueError, FileNotFoundError) as exc:
        print(f"[gpu-smoke] error: {exc}", file=sys.stderr)
        return 2
    runs.write_json_atomic(args.run / "gpu_smoke.json", {"gpu": args.gpu, **summary})
    print(render(summary, args.gpu))
    print(f"[gpu-smoke] written {args.run / 'gpu_smoke.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
