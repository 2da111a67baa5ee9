"""`python -m experiments.core.argv MODULE [ARG ...]`: run MODULE's command line with the user's
ARGS appended, split by Python, never by a shell.

The Makefile hands every user value to its recipes single-quoted and unexpanded, and ARGS (several
Hydra overrides in one string) in the environment variable EXPERIMENTS_ARGS; here it becomes
words with shlex (quotes group, nothing else is special), so `;`, `$(...)` and backticks in it
are plain characters of an override, which Hydra or our checks then reject by name.
"""
from __future__ import annotations

import os
import runpy
import shlex
import sys

ENV = "EXPERIMENTS_ARGS"


def user_args(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:  # an unbalanced quote
        raise SystemExit(f"ARGS={text!r}: {exc} (quote values with spaces once: ARGS=\"run.comparison='a b'\")") from None


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    module, args = sys.argv[1], sys.argv[2:]
    extra = user_args(os.environ.pop(ENV, ""))
    sys.argv = [module, *args, *extra]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
