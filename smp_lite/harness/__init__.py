"""The run machinery every task runs on, apart from the method: `launch` (the start of a run,
its loaders and its `Run`, once for all tasks), the training loop (engine.py), where it computes
(runtime.py), checkpoints (checkpoint.py), run folders (folders.py) and the errors a user can
act on (errors.py)."""
