"""The socket's filesystem security, peer credentials and token mode, on real sockets."""

from __future__ import annotations

import os
import socket
import stat

import anyio
import pytest

from conductor_core.client import Client, ClientError, UnixClientChannel, connect_unix
from conductor_core.config import Config
from conductor_core.framing import FrameDecoder, encode_frame
from conductor_core.protocol import PROTOCOL_VERSION, Error, Hello, Welcome, decode_server, encode
from conductor_core.paths import token_path
from conductor_transport_unix.config import UnixConfig
from conductor_transport_unix.security import AlreadyRunning, UnsafeSocketPath
from conductor_transport_unix.transport import UnixTransport

NOBODY = 65534


class _Stub:
    """Just enough conductor for start-up checks that fail before any connection."""

    def __init__(self) -> None:
        self.config = Config()
        self.stopping = anyio.Event()


async def _start(path) -> None:
    await UnixTransport("unix", UnixConfig(path=str(path))).serve(_Stub())


async def test_directory_is_0700_and_socket_0600(serve_unix, sock_dir):
    async with serve_unix() as s:
        d = os.lstat(s.path.parent)
        assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == os.geteuid()
        st = os.lstat(s.path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        async with connect_unix(s.path) as client:
            assert client.welcome is not None
    assert not s.path.exists(), "the socket file is removed at shutdown"


async def test_refuses_group_or_world_writable_directory(sock_dir):
    bad = sock_dir / "open"
    bad.mkdir()
    bad.chmod(0o777)
    with pytest.raises(UnsafeSocketPath, match="writable by group or others"):
        await _start(bad / "c.sock")
    bad.chmod(0o770)
    with pytest.raises(UnsafeSocketPath, match="writable by group or others"):
        await _start(bad / "c.sock")
    assert not (bad / "c.sock").exists()


async def test_refuses_directory_owned_by_someone_else(sock_dir):
    other = sock_dir / "theirs"
    other.mkdir(mode=0o700)
    os.chown(other, NOBODY, NOBODY)
    with pytest.raises(UnsafeSocketPath, match=f"owned by uid {NOBODY}"):
        await _start(other / "c.sock")


async def test_refuses_symlinked_directory(sock_dir):
    real = sock_dir / "real"
    real.mkdir(mode=0o700)
    (sock_dir / "link").symlink_to(real)
    with pytest.raises(UnsafeSocketPath, match="symlink"):
        await _start(sock_dir / "link" / "c.sock")
    assert list(real.iterdir()) == []


async def test_refuses_a_path_that_is_not_a_socket(sock_dir):
    (sock_dir / "run").mkdir(mode=0o700)
    (sock_dir / "run" / "c.sock").write_text("precious")
    with pytest.raises(UnsafeSocketPath, match="not a socket"):
        await _start(sock_dir / "run" / "c.sock")
    assert (sock_dir / "run" / "c.sock").read_text() == "precious"


async def test_stale_socket_is_replaced(serve_unix, sock_dir):
    run = sock_dir / "run"
    run.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run / "c.sock"))
    stale.close()  # the file stays; no one listens: a crashed conductor's leftover
    async with serve_unix() as s:
        async with connect_unix(s.path) as client:
            assert client.welcome is not None


async def test_live_socket_means_another_conductor(serve_unix, sock_dir):
    async with serve_unix() as s:
        with pytest.raises(AlreadyRunning, match=rf"another conductor \(pid {os.getpid()}\) is already listening"):
            await _start(s.path)
        # the refused start did not take the running one's socket away
        async with connect_unix(s.path) as client:
            assert client.welcome is not None


def _fork_connect_as(uid: int, path: str, expect_close: bool) -> tuple[str, bytes]:
    """Fork; the child drops to ``uid``, connects, sends hello and reports what came back.

    Runs in a worker thread (fork + waitpid block). The child only makes plain syscalls and
    leaves with ``os._exit``, so forking a threaded process is safe enough here.
    """
    hello = encode_frame(encode(Hello(PROTOCOL_VERSION, surface="intruder")))
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = b"?"
        data = b""
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
            except PermissionError:
                status = b"EACCES"
            else:
                s.sendall(hello)
                while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                status = b"OPEN"
                if expect_close and s.recv(1) == b"":
                    status = b"CLOSED"
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            status = repr(exc).encode()[:200]
        finally:
            os.write(wfd, status + b"\n" + data)
            os._exit(0)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    os.waitpid(pid, 0)
    status, _, data = b"".join(chunks).partition(b"\n")
    return status.decode(), data


async def _as_nobody(path, expect_close: bool = True) -> tuple[str, list]:
    status, data = await anyio.to_thread.run_sync(_fork_connect_as, NOBODY, str(path), expect_close)
    decoder = FrameDecoder()
    decoder.receive_data(data)
    return status, [decode_server(frame) for frame in decoder.events_received()]


async def test_other_uid_cannot_even_reach_the_socket(serve_unix):
    async with serve_unix() as s:
        status, messages = await _as_nobody(s.path)
        assert status == "EACCES", status
        assert messages == []


async def test_other_uid_is_rejected_by_peer_credentials(serve_unix):
    """Even with the filesystem opened up by mistake, SO_PEERCRED keeps uid 65534 out."""
    async with serve_unix() as s:
        s.path.parent.parent.chmod(0o711)
        s.path.parent.chmod(0o711)
        s.path.chmod(0o666)
        status, messages = await _as_nobody(s.path)
        assert status == "CLOSED", status
        assert len(messages) == 1 and isinstance(messages[0], Error), messages
        assert messages[0].code == "unauthorized"
        assert messages[0].message == f"uid {NOBODY} may not connect to this conductor"
        assert s.transport.active == 0
        assert s.conductor.connections == set(), "the kernel never saw the connection"


async def test_allow_list_admits_another_uid(serve_unix):
    async with serve_unix(transport={"allowed_uids": [os.geteuid(), NOBODY]}) as s:
        s.path.parent.parent.chmod(0o711)
        s.path.parent.chmod(0o711)
        s.path.chmod(0o666)
        status, messages = await _as_nobody(s.path, expect_close=False)
        assert status == "OPEN", status
        assert isinstance(messages[0], Welcome), messages


async def test_token_mode(serve_unix, sock_dir):
    async with serve_unix(transport={"auth": "token"}) as s:
        tfile = token_path(s.path)
        st = os.lstat(tfile)
        assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode)
        first_token = tfile.read_text().strip()
        assert len(bytes.fromhex(first_token)) == 32
        # right token: found in the token file by the client library itself
        async with connect_unix(s.path) as client:
            assert client.welcome is not None
        # wrong token
        with pytest.raises(ClientError) as wrong:
            async with connect_unix(s.path, token="0" * 64):
                pass
        assert wrong.value.code == "unauthorized"

        # missing token (a client that does not read the file)
        async def connect():
            return UnixClientChannel(await anyio.connect_unix(s.path))

        with pytest.raises(ClientError) as missing:
            async with Client(connect):
                pass
        assert missing.value.code == "unauthorized"
    assert not tfile.exists(), "the token file is removed at shutdown"
    async with serve_unix(transport={"auth": "token"}) as s:
        assert tfile.read_text().strip() != first_token, "a new token on each start"
