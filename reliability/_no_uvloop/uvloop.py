"""Put on ``PYTHONPATH`` to make ``import uvloop`` fail, so ``conductor serve`` runs on the
standard asyncio loop (``python -m reliability soak --loop-debug`` does this: see
docs/reliability.md, "Known problem", for uvloop together with asyncio debug mode)."""

raise ImportError("uvloop is disabled for this run (reliability/_no_uvloop)")
