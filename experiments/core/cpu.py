"""What this CPU can do, read from /proc/cpuinfo (no torch import: config composition stays fast).

Used by conf/ through the `${cpu_bf16:}` resolver (experiments.core.config): LoRA on the cpu
profile trains in bf16 only where the CPU has native bf16 arithmetic. Measured on a 2x1024-token
forward+backward of SmolLM2-135M: with AMX 3.4 s bf16 vs 7.0 s fp32; on an AVX2-only CPU (AMD EPYC,
no AVX-512) 18-20 s fp32 and over 290 s bf16 (torch's bf16 matmul falls to a reference path).
"""
from __future__ import annotations

from pathlib import Path

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The `flags` of the first processor listed; empty where the file is missing (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):   # x86, aarch64
            return set(value.split())
    return set()


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True where bf16 matmuls run natively (AMX or AVX512-BF16), so bf16 training is faster than fp32."""
    return any(flag in cpu_flags(cpuinfo) for flag in NATIVE_BF16_FLAGS)
