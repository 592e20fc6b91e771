"""Nothing blocking inside ``async def``: an AST scan of the kernel and every plugin.

Flags, inside an ``async def`` body (not inside a nested sync ``def``, ``lambda`` or class):
``time.sleep``, ``open``/``io.open``, ``Path.read_text``/``write_text``/``read_bytes``/
``write_bytes`` (unless awaited, as ``anyio.Path``'s are), ``subprocess.*`` runners,
``os.system``/``os.popen``/``os.wait*``, ``requests.*``, sync httpx (``httpx.Client``,
``httpx.get``...), ``urllib.request.urlopen``, blocking DNS, ``input``/``sys.stdin.read*``, and
``recv``/``send``/``connect``/``accept``... on a socket made in the same function by
``socket.socket``/``create_connection``/``socketpair`` unless it was made non-blocking.
Passing a blocking callable to ``anyio.to_thread.run_sync(fn, ...)`` is fine: nothing is called.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXCLUDED_DIRS = {"tests", "benchmarks", "__pycache__", "build"}
EXCLUDED_FILES = {"dev.py"}

BLOCKING = {
    "time.sleep",
    "open",
    "io.open",
    "builtins.open",
    "input",
    "os.system",
    "os.popen",
    "os.wait",
    "os.waitpid",
    "subprocess.run",
    "subprocess.call",
    "subprocess.check_call",
    "subprocess.check_output",
    "subprocess.Popen",
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "socket.create_connection",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyname_ex",
    "socket.gethostbyaddr",
    "socket.getfqdn",
    "urllib.request.urlopen",
    "sys.stdin.read",
    "sys.stdin.readline",
    "sys.stdin.readlines",
    "httpx.Client",
    "httpx.HTTPTransport",
    *(f"httpx.{verb}" for verb in ("get", "post", "put", "patch", "delete", "head", "options", "request", "stream")),
}
BLOCKING_MODULES = ("requests.",)
PATH_METHODS = {"read_text", "write_text", "read_bytes", "write_bytes"}
SOCKET_MAKERS = {"socket.socket", "socket.create_connection", "socket.socketpair", "socket.fromfd"}
SOCKET_METHODS = {"recv", "recv_into", "recvfrom", "recvmsg", "send", "sendall", "sendto", "sendmsg", "connect", "accept", "makefile"}
NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, from every import in the file."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _resolve(node: ast.AST, aliases: dict[str, str]) -> str | None:
    name = _dotted(node)
    if name is None:
        return None
    head, _, rest = name.partition(".")
    head = aliases.get(head, head)
    return f"{head}.{rest}" if rest else head


def _own_nodes(body: list[ast.stmt]):
    """Every node of an async function's body, not descending into nested scopes."""
    stack: list[ast.AST] = [n for n in reversed(body) if not isinstance(n, NESTED_SCOPES)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed([c for c in ast.iter_child_nodes(node) if not isinstance(c, NESTED_SCOPES)]))


def _scan_function(func: ast.AsyncFunctionDef, aliases: dict[str, str]) -> list[tuple[int, str]]:
    nodes = list(_own_nodes(func.body))
    awaited = {id(n.value) for n in nodes if isinstance(n, ast.Await)}
    calls = [n for n in nodes if isinstance(n, ast.Call)]

    sockets: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr) and isinstance(node.value, ast.Call):
            if _resolve(node.value.func, aliases) in SOCKET_MAKERS:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    elts = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
                    sockets.update(ast.unparse(e) for e in elts)
    nonblocking = {
        ast.unparse(c.func.value)
        for c in calls
        if isinstance(c.func, ast.Attribute)
        and c.func.attr in ("setblocking", "settimeout")
        and c.args
        and isinstance(c.args[0], ast.Constant)
        and c.args[0].value in (False, 0, 0.0)
    }

    found = []
    for call in calls:
        name = _resolve(call.func, aliases)
        if name is not None and (name in BLOCKING or name.startswith(BLOCKING_MODULES)):
            found.append((call.lineno, f"{name}()"))
            continue
        if not isinstance(call.func, ast.Attribute) or id(call) in awaited:
            continue
        method = call.func.attr
        if method in PATH_METHODS:
            found.append((call.lineno, f".{method}() (sync file I/O; use anyio.Path or to_thread)"))
        elif method in SOCKET_METHODS:
            owner = call.func.value
            made_here = isinstance(owner, ast.Call) and _resolve(owner.func, aliases) in SOCKET_MAKERS
            key = ast.unparse(owner)
            if made_here or (key in sockets and key not in nonblocking):
                found.append((call.lineno, f"{key}.{method}() on a blocking socket"))
    return found


def scan_source(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: call (in async def name)`` for each blocking call in an async body."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef):
            for line, what in _scan_function(node, aliases):
                out.append(f"{filename}:{line}: {what} in async def {node.name}")
    return sorted(out, key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def _files() -> list[Path]:
    roots = [ROOT / "conductor_core", *sorted(p for p in (ROOT / "plugins").glob("*") if p.is_dir())]
    files = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if EXCLUDED_DIRS.intersection(rel.parts[:-1]) or path.name in EXCLUDED_FILES:
                continue
            files.append(path)
    return files


FILES = _files()

# Known findings in files owned by other helpers: strict, so they flip once fixed.
KNOWN: dict[str, str] = {}


def _param(path: Path):
    rel = str(path.relative_to(ROOT))
    if rel in KNOWN:
        return pytest.param(path, id=rel, marks=pytest.mark.xfail(strict=True, reason=KNOWN[rel]))
    return pytest.param(path, id=rel)


def test_the_scan_sees_the_kernel_and_the_plugins():
    rels = {str(p.relative_to(ROOT)) for p in FILES}
    assert {"conductor_core/kernel.py", "conductor_core/relay.py", "conductor_core/testing/fakes.py"} <= rels
    assert any(r.startswith("plugins/") for r in rels)
    assert not any("/tests/" in r or r.startswith("tests/") for r in rels)


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_no_blocking_calls_in_async_code(path):
    findings = scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not findings, "blocking calls in async code:\n" + "\n".join(findings)


# ---------------------------------------------------------------- the scanner itself


def scan(code: str) -> list[str]:
    return [f.split(": ", 1)[1] for f in scan_source(textwrap.dedent(code))]


@pytest.mark.parametrize(
    "code, expected",
    [
        ("import time\nasync def f():\n    time.sleep(1)\n", "time.sleep()"),
        ("import time as t\nasync def f():\n    t.sleep(1)\n", "time.sleep()"),
        ("from time import sleep\nasync def f():\n    sleep(1)\n", "time.sleep()"),
        ("async def f(p):\n    with open(p) as fh:\n        return fh.read()\n", "open()"),
        ("async def f(p):\n    return p.read_text()\n", ".read_text()"),
        ("from pathlib import Path\nasync def f():\n    Path('x').write_bytes(b'')\n", ".write_bytes()"),
        ("import subprocess\nasync def f():\n    subprocess.run(['ls'])\n", "subprocess.run()"),
        ("from subprocess import Popen\nasync def f():\n    Popen(['ls'])\n", "subprocess.Popen()"),
        ("import subprocess\nasync def f():\n    return subprocess.check_output(['ls'])\n", "subprocess.check_output()"),
        ("import os\nasync def f():\n    os.system('ls')\n", "os.system()"),
        ("import requests\nasync def f():\n    requests.get('http://x')\n", "requests.get()"),
        ("import requests\nasync def f():\n    requests.Session().get('http://x')\n", "requests.Session()"),
        ("import httpx\nasync def f():\n    httpx.get('http://x')\n", "httpx.get()"),
        ("import httpx\nasync def f():\n    with httpx.Client() as c:\n        c.get('/')\n", "httpx.Client()"),
        ("from httpx import Client\nasync def f():\n    Client()\n", "httpx.Client()"),
        ("import socket\nasync def f():\n    s = socket.socket()\n    s.connect(('h', 1))\n", "s.connect() on a blocking socket"),
        ("import socket\nasync def f():\n    a, b = socket.socketpair()\n    b.recv(1)\n", "b.recv() on a blocking socket"),
        ("import socket\nasync def f(self):\n    self.s = socket.socket()\n    self.s.sendall(b'x')\n", "self.s.sendall() on a blocking socket"),
        ("import socket\nasync def f():\n    socket.socket().accept()\n", "socket.socket().accept() on a blocking socket"),
        ("import socket\nasync def f():\n    socket.create_connection(('h', 1))\n", "socket.create_connection()"),
        ("import socket\nasync def f():\n    socket.getaddrinfo('h', 1)\n", "socket.getaddrinfo()"),
        ("import sys\nasync def f():\n    return sys.stdin.readline()\n", "sys.stdin.readline()"),
        ("import time\ndef outer():\n    async def inner():\n        time.sleep(1)\n", "time.sleep()"),
        ("import time\nclass C:\n    async def m(self):\n        if True:\n            for _ in ():\n                time.sleep(1)\n", "time.sleep()"),
        ("import anyio\nasync def f(p):\n    await anyio.to_thread.run_sync(open(p).read)\n", "open()"),
    ],
)
def test_scanner_finds_blocking_calls(code, expected):
    assert expected in " | ".join(scan(code)), scan(code)


def test_scanner_reports_file_and_line():
    (finding,) = scan_source("import time\n\nasync def nap():\n    x = 1\n    time.sleep(x)\n", "pkg/mod.py")
    assert finding == "pkg/mod.py:5: time.sleep() in async def nap"


@pytest.mark.parametrize(
    "code",
    [
        # nested sync function: runs wherever it is called (e.g. in a worker thread)
        "import time\nasync def f():\n    def work():\n        time.sleep(1)\n    return work\n",
        "import time\nasync def f():\n    return lambda: time.sleep(1)\n",
        # a blocking callable handed to a thread, not called on the loop
        "import anyio, time\nasync def f():\n    await anyio.to_thread.run_sync(time.sleep, 1)\n",
        "import anyio\nasync def f(p):\n    return await anyio.to_thread.run_sync(p.read_text)\n",
        "import anyio\nasync def f(p):\n    return await anyio.to_thread.run_sync(lambda: open(p).read())\n",
        "import anyio, functools, subprocess\nasync def f():\n    await anyio.to_thread.run_sync(functools.partial(subprocess.run, ['ls']))\n",
        # blocking calls in sync code are not this test's business
        "import time\ndef f():\n    time.sleep(1)\n    open('x')\n",
        # the async twins
        "import anyio\nasync def f():\n    await anyio.sleep(1)\n",
        "import anyio\nasync def f(p):\n    return await anyio.Path(p).read_text()\n",
        "import anyio\nasync def f(p):\n    async with await anyio.open_file(p) as fh:\n        return await fh.read()\n",
        "import httpx\nasync def f():\n    async with httpx.AsyncClient() as c:\n        await c.get('/')\n",
        "import anyio\nasync def f():\n    p = await anyio.open_process(['ls'])\n    await p.wait()\n",
        # a name that only looks like a blocking one
        "from anyio import open_file as open\nasync def f(p):\n    await open(p)\n",
        "async def f(stream):\n    await stream.send(b'x')\n    await stream.receive()\n",
        "async def f(gen):\n    gen.send(None)\n",
        # a socket made non-blocking and driven by anyio's readiness waits
        "import anyio, socket\nasync def f():\n    s = socket.socket()\n    s.setblocking(False)\n    await anyio.wait_readable(s)\n    s.recv(1)\n",
    ],
)
def test_scanner_allows(code):
    assert scan(code) == []
