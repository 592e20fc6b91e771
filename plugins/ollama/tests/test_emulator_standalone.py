"""The emulator runs standalone (``python -m conductor_core.testing.ollama_emulator``) in its
own process, as a benchmark uses it: options for timing, models and per-model faults."""

from __future__ import annotations

import sys

import anyio
import httpx
import pytest

from conductor_core.testing.ollama_emulator import Fault, main


async def test_standalone_process_serves_and_applies_options():
    cmd = [sys.executable, "-m", "conductor_core.testing.ollama_emulator", "--port", "0", "--model", "llama3.2",
           "--reply", "one two three", "--fault", "broken=status=503", "--token-delay-ms", "1"]
    process = await anyio.open_process(cmd)
    try:
        with anyio.fail_after(30):  # a hang guard for the child's start-up
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        url = line.decode().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url) as client:
            reply = await client.post("/api/chat", json={"model": "llama3.2", "stream": False,
                                                         "messages": [{"role": "user", "content": "x"}]})
            assert reply.json()["message"]["content"] == "one two three"
            broken = await client.post("/api/chat", json={"model": "broken", "messages": []})
            assert broken.status_code == 503 and "maximum pending requests exceeded" in broken.json()["error"]
    finally:
        process.terminate()
        with anyio.move_on_after(10, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


def test_fault_specs_parse():
    assert Fault.parse("status=503") == Fault(status=503)
    assert Fault.parse("die_after=3, token_delay=0.01") == Fault(die_after=3, token_delay=0.01)
    assert Fault.parse("hang_before_first_byte") == Fault(hang_before_first_byte=True)
    assert Fault.parse("message=oh no,error_after=2") == Fault(message="oh no", error_after=2)
    with pytest.raises(ValueError, match="unknown fault field 'explode'"):
        Fault.parse("explode=1")


def test_bad_fault_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["--fault", "nomodel"])
    assert "MODEL=SPEC" in capsys.readouterr().err
