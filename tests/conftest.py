import os
import sys

# Tests run against the working tree even when the package is not installed.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED_INI = os.path.join(ROOT, "..", "shared", "nntrainer-ini")
