"""`make test` executes every tutorial with nbmake at its smallest sizes: tutorial.py, which
each notebook imports, reads SMP_LITE_TUTORIAL_SMOKE. `make notebooks` runs them at full size."""

import os

os.environ.setdefault("SMP_LITE_TUTORIAL_SMOKE", "1")
