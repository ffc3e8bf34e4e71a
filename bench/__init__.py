"""Benchmarks: run each module as `python -m bench.<name>`; results land in bench/results/."""
