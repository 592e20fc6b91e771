"""pytest plugin: runs async tests on asyncio in debug mode and fails a test whose event loop
ran a callback longer than ``CONDUCTOR_SLOW_CALLBACK_MS`` (default 100 ms): the rule that the
conductor never blocks its loop, enforced at run time."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

SLOW_CALLBACK_S = float(os.environ.get("CONDUCTOR_SLOW_CALLBACK_MS", "100")) / 1000


def _loop_factory() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.slow_callback_duration = SLOW_CALLBACK_S
    return loop


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and " took " in message:
            self.records.append(message)


@pytest.fixture
def anyio_backend():
    return "asyncio", {"debug": True, "loop_factory": _loop_factory}


@pytest.fixture(autouse=True)
def _fail_on_slow_callbacks(request):
    """Fails the test if the asyncio loop logged a slow callback. Opt out with
    ``@pytest.mark.allow_slow_callbacks`` (for tests that measure a blocking thing on purpose)."""
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("allow_slow_callbacks") is None:
        pytest.fail("the event loop was blocked:\n" + "\n".join(handler.records[:5]), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_slow_callbacks: do not fail on slow asyncio callbacks")
