"""python -m experiments.bfcl --base-url ... --model ... --out ... [--categories quick|full|a,b]"""
import sys

from experiments.bfcl.run import main

sys.exit(main())
