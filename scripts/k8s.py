#!/usr/bin/env python
"""make k8s -> experiments.cluster.k8s (Hydra overrides as arguments) -> results/k8s/<run_id>/*.yaml"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from experiments.cluster.k8s import main  # noqa: E402

sys.exit(main())
