"""Property-based fuzzing of every decoder that takes outside bytes (hypothesis).

Each target is a check function (``check_<target>(data, cuts)``) that feeds one input, split
at ``cuts``, to a decoder and asserts its contract: it raises only its documented error, never
holds more than its bound, and gives the same result for every split of the same bytes. The
inputs mix structured near-valid messages, mutations of the corpus (``reliability/corpus/
<target>/``: hand-picked edge cases plus anything a long run found) and raw random bytes.

CI runs each target for a few hundred examples (tests/test_fuzz_*.py); a long run is::

    python -m reliability fuzz --target frame --examples 100000
    python -m reliability fuzz --target all --examples 100000

A failing input is shrunk by hypothesis and saved to the corpus as ``found-<hash>.bin``.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conductor_core.avatar import AvatarParser
from conductor_core.config import ConfigError, load_config
from conductor_core.errors import BadMessage, TooLarge
from conductor_core.framing import HEADER_SIZE, FrameDecoder, encode_frame
from conductor_core.protocol import decode_client, encode

__all__ = [
    "CORPUS",
    "TARGETS",
    "check_avatar",
    "check_config",
    "check_frame",
    "check_http1",
    "check_ndjson",
    "check_protocol",
    "check_sse",
    "corpus",
    "inputs",
    "replay_corpus",
    "run",
    "splits",
]

CORPUS = Path(__file__).resolve().parent / "corpus"
FRAME_MAX = 256  # small bounds so random inputs reach them
LINE_MAX = 256
EVENT_MAX = 512
HOLD_BACK = 24


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


# ---------------------------------------------------------------------------- the checks


def check_frame(data: bytes, cuts: list[int]) -> None:
    """FrameDecoder: only TooLarge; never buffers more than one frame; split-invariant."""

    def run_parts(parts: list[bytes]) -> tuple[list[bytes], bool]:
        decoder, events = FrameDecoder(FRAME_MAX), []
        for part in parts:
            try:
                decoder.receive_data(part)
            except TooLarge:
                events.extend(decoder.events_received())
                return events, True
            assert decoder.buffered <= FRAME_MAX + HEADER_SIZE, decoder.buffered
            events.extend(decoder.events_received())
        return events, False

    whole = run_parts([data])
    split = run_parts(_split(data, cuts))
    assert whole == split, (whole, split)
    for event in whole[0]:
        assert len(event) <= FRAME_MAX
    # framing what came out gives back a prefix of the input
    assert data.startswith(b"".join(encode_frame(e) for e in whole[0]))


def check_protocol(data: bytes, cuts: list[int]) -> None:
    """decode_client: a message or BadMessage, for both codecs; a decoded message re-encodes."""
    del cuts
    for codec in ("json", "msgpack"):
        try:
            message = decode_client(data, codec)
        except BadMessage as exc:
            assert exc.message
            continue
        again = decode_client(encode(message, codec), codec)
        assert again == message, (message, again)


def check_ndjson(data: bytes, cuts: list[int]) -> None:
    """Ollama's LineSplitter: only LineTooLong; bounded; split-invariant; lines decode or raise
    msgspec.DecodeError or UnicodeDecodeError (the backend turns both into StreamFailed)."""
    from conductor_ollama.stream import LineSplitter, LineTooLong, decode_line

    def run_parts(parts: list[bytes]) -> tuple[list[bytes], bool]:
        splitter, lines = LineSplitter(LINE_MAX), []
        for part in parts:
            try:
                lines.extend(splitter.feed(part))
            except LineTooLong:
                return lines, True
            assert len(splitter._buf) <= LINE_MAX
        rest = splitter.flush()
        return lines + ([rest] if rest else []), False

    whole = run_parts([data])
    split = run_parts(_split(data, cuts))
    if not whole[1] and not split[1]:
        assert whole == split, (whole, split)
    for line in whole[0]:
        assert b"\n" not in line
        try:
            decode_line(line)
        except (msgspec.DecodeError, UnicodeDecodeError):  # both become StreamFailed in the backend
            pass


def check_sse(data: bytes, cuts: list[int]) -> None:
    """SSEParser: only SSEError; bounded line and event; split-invariant."""
    from conductor_openai_compat.sse import SSEError, SSEParser

    def run_parts(parts: list[bytes]) -> tuple[list, bool]:
        parser, events = SSEParser(max_line_bytes=LINE_MAX, max_event_bytes=EVENT_MAX), []
        try:
            for part in parts:
                events.extend(parser.feed(part))
                assert len(parser._buffer) <= LINE_MAX + 1
                assert parser._data_bytes <= EVENT_MAX
            tail = parser.close()
        except SSEError:
            return events, True
        return events + ([tail] if tail is not None else []), False

    whole = run_parts([data])
    split = run_parts(_split(data, cuts))
    if not whole[1] and not split[1]:
        assert whole == split, (whole, split)
    for event in whole[0]:
        assert len(event.data) <= EVENT_MAX


def check_avatar(data: bytes, cuts: list[int]) -> None:
    """AvatarParser: never raises, holds at most hold_back characters, split-invariant, and
    text outside tags is kept in order (removing tags only ever deletes characters)."""
    text = data.decode("utf-8", "replace")

    def run_parts(parts: list[str]) -> tuple[str, list]:
        parser = AvatarParser("yolla", max_commands=3, hold_back=HOLD_BACK)
        out, commands = [], []
        for part in parts:
            shown, cmds = parser.feed(part)
            out.append(shown)
            commands.extend(cmds)
            assert len(parser.held) <= HOLD_BACK, parser.held
        shown, cmds = parser.end()
        out.append(shown)
        commands.extend(cmds)
        assert len(commands) <= 3
        return "".join(out), commands

    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    whole = run_parts([text])
    assert run_parts(pieces) == whole
    it = iter(text)
    assert all(ch in it for ch in whole[0]), "output is not a subsequence of the input"


def check_http1(data: bytes, cuts: list[int]) -> None:
    """The backends' HTTP/1.1 response parser: only HTTPProtocolError; the unparsed buffer stays
    within the head/chunk-line bounds; the same head and body bytes for every split."""
    from conductor_core.http1 import MAX_HEAD, HTTPProtocolError, ResponseParser

    def run_parts(parts: list[bytes]):
        parser, body = ResponseParser(), []
        try:
            for part in parts:
                body.extend(parser.feed(part))
                assert len(parser._buf) <= MAX_HEAD + 4, len(parser._buf)
            parser.eof()
        except HTTPProtocolError:
            return None
        head = parser.head
        return (head.status, head.headers) if head else None, b"".join(body), parser.complete

    whole = run_parts([data])
    split = run_parts(_split(data, cuts))
    if whole is not None and split is not None:
        assert whole == split, (whole, split)


_config_file: Path | None = None


def _remove_config_dir() -> None:
    if _config_file is not None:
        shutil.rmtree(_config_file.parent, ignore_errors=True)


def check_config(data: bytes, cuts: list[int]) -> None:
    """load_config: a Config or ConfigError (one line naming the file), never another error."""
    del cuts
    global _config_file
    if _config_file is None:
        _config_file = Path(tempfile.mkdtemp(prefix="cfuzz-")) / "conductor.toml"
        atexit.register(_remove_config_dir)
    _config_file.write_bytes(data)
    try:
        load_config(_config_file, environ={})
    except ConfigError as exc:
        assert str(exc).startswith(str(_config_file)), str(exc)


TARGETS: dict[str, Callable[[bytes, list[int]], None]] = {
    "avatar": check_avatar,
    "config": check_config,
    "frame": check_frame,
    "http1": check_http1,
    "ndjson": check_ndjson,
    "protocol": check_protocol,
    "sse": check_sse,
}

# ---------------------------------------------------------------------------- the inputs


def corpus(target: str) -> list[bytes]:
    directory = CORPUS / target
    if not directory.is_dir():
        return []
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()]


def _json_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20),
    _json_containers,
    max_leaves=12,
)
_client_types = st.sampled_from(["hello", "chat", "cancel", "ping", "pong", "models", "status", "history", "sprite", "Chat", ""])
_fields = st.sampled_from(["type", "id", "content", "protocol", "surface", "token", "capabilities", "seq",
                           "conversation", "model", "options", "system", "x"])


@st.composite
def _near_messages(draw) -> bytes:
    doc = draw(st.dictionaries(_fields, _json_values, max_size=6))
    if draw(st.booleans()):
        doc["type"] = draw(_client_types)
    if draw(st.booleans()):
        return msgspec.json.encode(doc)
    return msgspec.msgpack.encode(doc)


@st.composite
def _frames(draw) -> bytes:
    payloads = draw(st.lists(st.binary(max_size=FRAME_MAX + 8), max_size=5))
    data = b"".join(len(p).to_bytes(4, "big") + p for p in payloads)
    if draw(st.booleans()):
        data += draw(st.binary(max_size=8))
    return data


_ndjson_line = st.one_of(
    st.just(b'{"message":{"role":"assistant","content":"hi"},"done":false}'),
    st.just(b'{"done":true,"eval_count":3,"eval_duration":100}'),
    st.just(b'{"error":"boom"}'),
    _json_values.map(msgspec.json.encode),
    st.binary(max_size=LINE_MAX + 16),
)
_sse_line = st.one_of(
    st.sampled_from([b"data: [DONE]", b": ping", b"event: error", b"id: 7", b"retry: 10", b"", b"\xef\xbb\xbf"]),
    st.binary(max_size=64).map(lambda b: b"data: " + b),
    st.binary(max_size=LINE_MAX + 16),
)
_eol = st.sampled_from([b"\n", b"\r\n", b"\r", b""])
_avatar_text = st.lists(
    st.sampled_from(["[yolla:", "[yolla:mood=happy]", "[yolla:pose=wave]", "]", "[", "yolla", ":", "=", "\n",
                     "hello ", "é", "[yolla:emote=", "x" * 30]) | st.text(max_size=10),
    max_size=20,
).map(lambda parts: "".join(parts).encode())
_toml_doc = st.lists(
    st.sampled_from([
        "[limits]", "[history]", "[avatar]", "[backends.a]", "[transports.u]", "[router]", "type = \"ollama\"",
        "max_frame_bytes = 0", "max_frame_bytes = 1024", "log_level = \"loud\"", "shutdown_grace_s = -1",
        "backends = 3", "source = \"x\"", "prefix = \"\"", "hold_back_chars = 4", "[[x]]", "a = [1, \"b\"]",
        "default_model = \"m\"", "unknown = 1", "max_messages = -1", "= 1", "[limits.x]",
    ]) | st.text(max_size=30),
    max_size=12,
).map(lambda lines: "\n".join(lines).encode())


@st.composite
def _http_responses(draw) -> bytes:
    status = draw(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 503 Busy", b"HTTP/1.1 abc", b"HTTP/2 200", b"SSH-2.0"]))
    headers = draw(st.lists(st.sampled_from([
        b"Transfer-Encoding: chunked", b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: x",
        b"Connection: close", b"Content-Type: application/x-ndjson", b"Bad header", b"X: " + b"y" * 40,
    ]), max_size=4))
    body = draw(st.one_of(
        st.binary(max_size=64),
        st.lists(st.binary(max_size=20), max_size=4).map(
            lambda cs: b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in cs) + b"0\r\n\r\n"),
        st.just(b"ffffffffffffffffffff\r\n"), st.just(b"5\r\nabc"),
    ))
    return status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


@st.composite
def _mutated(draw, target: str) -> bytes:
    seeds = corpus(target) or [b""]
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 2))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


def inputs(target: str) -> st.SearchStrategy[bytes]:
    structured = {
        "frame": _frames(),
        "protocol": _near_messages(),
        "ndjson": st.lists(st.tuples(_ndjson_line, _eol), max_size=6).map(lambda xs: b"".join(a + b for a, b in xs)),
        "sse": st.lists(st.tuples(_sse_line, _eol), max_size=8).map(lambda xs: b"".join(a + b for a, b in xs)),
        "http1": _http_responses(),
        "avatar": _avatar_text,
        "config": _toml_doc,
    }[target]
    return st.one_of(structured, _mutated(target), st.binary(max_size=600))


def splits() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 2000), max_size=6)


# ---------------------------------------------------------------------------- the runner


def replay_corpus(target: str) -> int:
    """Run the check on every corpus input, unsplit and split in two; the number run."""
    check = TARGETS[target]
    items = corpus(target)
    for data in items:
        check(data, [])
        check(data, [len(data) // 2])
    return len(items)


def run(target: str, examples: int, *, seed: int | None = None, log=print) -> dict[str, float]:
    """Fuzz one target for ``examples`` examples; saves a failing input to the corpus and
    re-raises. Returns {examples, seconds}."""
    check = TARGETS[target]
    replay_corpus(target)
    found: list[bytes] = []

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              print_blob=True)
    @given(data=inputs(target), cuts=splits())
    def fuzz(data: bytes, cuts: list[int]) -> None:
        try:
            check(data, cuts)
        except Exception:
            found.append(data)
            raise

    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        fuzz = hypothesis_seed(seed)(fuzz)
    started = time.perf_counter()
    try:
        fuzz()
    except Exception:
        if found:
            directory = CORPUS / target
            directory.mkdir(parents=True, exist_ok=True)
            data = found[-1]  # the shrunk one is the last tried
            path = directory / f"found-{hashlib.sha256(data).hexdigest()[:12]}.bin"
            path.write_bytes(data)
            log(f"fuzz {target}: failing input saved to {path}")
        raise
    seconds = time.perf_counter() - started
    log(f"fuzz {target}: {examples} examples in {seconds:.1f} s, no failure")
    return {"examples": examples, "seconds": round(seconds, 1)}
