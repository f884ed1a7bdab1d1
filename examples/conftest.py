"""The notebooks run in the test suite (nbmake) with QUANTCL_NOTEBOOK_SMOKE=1: their parameter cell
then cuts steps, rows and seeds, so the suite checks that every cell runs without the minutes the
committed outputs took. `QUANTCL_NOTEBOOK_SMOKE=0 python -m pytest examples` runs them in full."""

import os

os.environ.setdefault("QUANTCL_NOTEBOOK_SMOKE", "1")
