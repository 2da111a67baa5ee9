"""`make report`: results/<run>/report.md from the run's files, one module per section.

files (readers, I/O) -> training, bfcl, serving, cost, environment (pure: gathered dict -> markdown
lines, plus their plots) -> assemble (header, order of sections, write). `compare` is `make compare`.
"""
__all__ = ["main", "render", "write_report", "BFCL_COLUMNS", "REPORT", "ReportError", "fmt", "bench_outputs",
           "bfcl_summary", "load_run", "recheck_from_records", "select_runs", "nearest_level", "pick_best"]

from experiments.report.assemble import main, render, write_report
from experiments.report.bfcl import BFCL_COLUMNS
from experiments.report.common import REPORT, ReportError, fmt
from experiments.report.files import bench_outputs, bfcl_summary, load_run, recheck_from_records, select_runs
from experiments.report.serving import nearest_level
from experiments.report.training import pick_best
