"""Benchmarks: `python -m bench.relay` (`make bench`, `make bench-short`), relay against direct."""
