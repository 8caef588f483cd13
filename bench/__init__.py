"""Benchmarks of the toolkit: time to verdict, the FASE 2 conversion at scale, the monitor's cost,
start-up. Run them all with `python -m bench` (see bench/__main__.py for the options)."""
