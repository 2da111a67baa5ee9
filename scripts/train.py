#!/usr/bin/env python
"""make train -> experiments.train.stage (Hydra overrides as arguments: method=dora axolotl.lora_r=32)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from experiments.train.stage import main  # noqa: E402

sys.exit(main())
