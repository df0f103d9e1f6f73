"""Tools around the method: the generated dataset (synth.py), dataset checks (check.py), tables
and pictures (report.py), `make reproduce` (reproduce.py) and `smp-lite bench` (bench.py)."""
