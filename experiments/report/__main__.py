"""python -m experiments.report [--run RUN] [--runs a,b] [overrides]"""
import sys

from experiments.report.assemble import main

sys.exit(main())
