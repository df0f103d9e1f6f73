"""`make test` executes every tutorial with nbmake at its smallest sizes: each notebook's
parameter cell reads SMP_LITE_TUTORIAL_SMOKE. `make notebooks` runs them at their full sizes."""

import os

os.environ.setdefault("SMP_LITE_TUTORIAL_SMOKE", "1")
