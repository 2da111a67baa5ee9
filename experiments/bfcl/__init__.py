"""BFCL through bfcl-eval's own runner, handlers and checker (see experiments.bfcl.run)."""
from experiments.bfcl.run import BfclError, attach_baseline, run_bfcl
from experiments.bfcl.tables import baseline_delta

__all__ = ["BfclError", "attach_baseline", "baseline_delta", "run_bfcl"]
