"""Reliability harness: a soak against flaky emulated backends, and decoder fuzzing.

    python -m reliability soak [--clients N --minutes M --quick]
    python -m reliability fuzz --target X --examples 100000

See docs/reliability.md for what each checks and the figures of the last full run.
"""

__all__: list[str] = []
