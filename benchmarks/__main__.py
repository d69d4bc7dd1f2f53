"""``python -m benchmarks``: run every scenario (see run_all.py)."""

import sys

from benchmarks.run_all import main

sys.exit(main(sys.argv[1:]))
