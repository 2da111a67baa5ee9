#!/usr/bin/env python
"""make merge -> experiments.train.merge (--run RUN, then Hydra overrides)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from experiments.train.merge import main  # noqa: E402

sys.exit(main())
