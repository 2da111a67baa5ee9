"""Peak memory of a process tree: a forked child that shares its parent's pages must not count
them twice (summing RSS did: 15.3 GiB reported for a trainer that held ~6.5 GiB)."""
from __future__ import annotations

import subprocess
import sys

from experiments.core.procmon import PeakMemory, tree_memory

MIB = 2**20
SIZE_MIB = 256

# The parent fills 256 MiB, forks a child that only sleeps (it maps the same pages, copy-on-write,
# untouched), and says "ready" once the child exists; both wait for stdin to close.
PARENT = f"""
import os, sys
buf = b"x" * ({SIZE_MIB} * {MIB})
pid = os.fork()
if pid == 0:
    sys.stdin.read(); os._exit(0)
print("ready", pid, flush=True)
sys.stdin.read()
os.waitpid(pid, 0)
"""


def test_forked_child_sharing_pages_is_counted_once():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        mem = tree_memory(proc.pid)
        with PeakMemory(proc.pid, interval_s=0.05) as peak:
            peak.sample()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert mem.processes == 2
    # Both processes are resident with the buffer: summing RSS counts it twice ...
    assert mem.largest_rss_bytes > SIZE_MIB * MIB
    assert mem.rss_sum_bytes > 2 * SIZE_MIB * MIB
    # ... PSS splits each shared page between the two: the tree holds it once (+ the interpreters).
    assert SIZE_MIB * MIB < mem.pss_bytes < 1.5 * SIZE_MIB * MIB
    assert mem.pss_bytes < 0.75 * mem.rss_sum_bytes
    assert peak.peak_pss_bytes < 1.5 * SIZE_MIB * MIB < peak.peak_rss_sum_bytes


def test_dead_process_reads_as_empty():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_memory(proc.pid).processes == 0
