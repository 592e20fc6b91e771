"""Running the daemon in the foreground: the event loop (uvloop when installed) and signals."""

from __future__ import annotations

import signal

import anyio

from .kernel import Conductor

__all__ = ["loop_options", "run_until_signalled"]


async def _serve(conductor: Conductor) -> None:
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await tg.start(conductor.run)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    conductor.log.info("received %s; shutting down", signal.Signals(signum).name)
                    conductor.request_stop()
                    return

            tg.start_soon(stop_on_signal)
            await conductor.stopped.wait()
            tg.cancel_scope.cancel()


def loop_options() -> dict[str, bool]:
    """anyio backend options: uvloop when it is installed (the `fast` extra), else asyncio's own."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def run_until_signalled(conductor: Conductor) -> None:
    anyio.run(_serve, conductor, backend="asyncio", backend_options=loop_options())
