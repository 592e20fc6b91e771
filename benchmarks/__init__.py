"""The Conductor benchmark suite: ``python -m benchmarks`` (see README.md)."""
