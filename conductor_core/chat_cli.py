"""``conductor chat``, ``conductor models`` and ``conductor status``: the terminal surface.

It must feel like ``ollama run``: tokens appear as they are generated (written and flushed one
by one), a spinner with the elapsed time shows while a cold model loads, and Ctrl-C stops the
reply (the conductor cancels the backend) without leaving the chat.

How the event loop stays unblocked: the loop and the connection live in a background thread
(an anyio blocking portal); the main thread does what blocks, i.e. ``input()`` with readline
editing, and waits for each reply. SIGINT is always delivered to the main thread, so Ctrl-C
at the prompt simply raises ``KeyboardInterrupt`` there (exit), and Ctrl-C during a reply is
turned into cancelling that reply's scope in the loop, which sends ``cancel{id}``.

Imports stay lazy: ``conductor chat`` start-up time is measured.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

__all__ = ["chat", "models", "status"]

HELP_TEXT = """\
/model NAME   use another model from the next reply on (/model alone shows the current one)
/new          start a new conversation
/history      show this conversation so far
/help         this help
/quit         leave (also /bye, Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C during a reply stops the reply."""

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Exit(Exception):
    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _socket_for(socket_opt: str | None, config_opt: str | None) -> str:
    """--socket, else $CONDUCTOR_SOCKET, else the config's first unix transport path, else default."""
    from .paths import SOCKET_ENV, socket_path

    if socket_opt:
        return str(socket_path(socket_opt))
    if not os.environ.get(SOCKET_ENV):
        from .config import ConfigError, find_config_file, load_config

        if config_opt or find_config_file() is not None:
            try:
                config = load_config(config_opt)
            except ConfigError as exc:
                raise Exit(2, f"conductor: config error: {exc}") from None
            for table in config.transports.values():
                if table.get("type") == "unix" and table.get("path"):
                    return str(socket_path(table["path"]))
    return str(socket_path())


class _Printer:
    """Writes one reply: sanitized text to stdout (flushed per token), spinner on stderr."""

    def __init__(self, *, as_json: bool, spinner: bool) -> None:
        from .termsafe import TerminalSanitizer

        self.as_json = as_json
        self.spinner = spinner
        self.sanitizer = TerminalSanitizer()
        self.last = "\n"
        self.spinning = False

    def json(self, message: Any) -> None:
        import msgspec

        sys.stdout.write(msgspec.json.encode(message).decode() + "\n")
        sys.stdout.flush()

    def spin(self, frame: int, elapsed: float) -> None:
        self.spinning = True
        sys.stderr.write(f"\r{SPINNER[frame % len(SPINNER)]} {elapsed:.1f}s")
        sys.stderr.flush()

    def stop_spinner(self) -> None:
        if self.spinning:
            self.spinning = False
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def text(self, text: str) -> None:
        safe = self.sanitizer.feed(text)
        if safe:
            sys.stdout.write(safe)
            sys.stdout.flush()
            self.last = safe[-1]

    def end_line(self) -> None:
        self.stop_spinner()
        if not self.as_json and self.last != "\n":
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.last = "\n"


class _Session:
    """Chat state shared by the REPL (main thread) and the replies (loop thread)."""

    def __init__(self, client: Any, *, model: str | None, conversation: str | None, system: str | None,
                 stats: bool, as_json: bool) -> None:
        self.client = client
        self.model = model
        self.conversation = conversation
        self.system = system
        self.show_stats = stats
        self.as_json = as_json

    async def reply(self, content: str, scope: Any) -> str:
        """Stream one reply; returns "ok", "cancelled"; raises ClientError."""
        import anyio

        from .client import ClientError
        from .protocol import Done, Token

        printer = _Printer(as_json=self.as_json, spinner=not self.as_json and sys.stderr.isatty())
        stream = self.client.chat(content, model=self.model, conversation=self.conversation, system=self.system)
        outcome = "cancelled"
        error: ClientError | None = None  # raised after the task group, so it is not wrapped in a group
        try:
            with scope:
                async with stream, anyio.create_task_group() as tg:
                    if printer.spinner:
                        tg.start_soon(_spin, printer)
                    try:
                        async for event in stream.events():
                            if isinstance(event, Token):
                                if printer.spinner:
                                    printer.spinner = False  # the spinner task stops at its next tick
                                    printer.stop_spinner()
                                if self.as_json:
                                    printer.json(event)
                                else:
                                    printer.text(event.text)
                            elif isinstance(event, Done) and self.as_json:
                                printer.json(event)
                        outcome = "ok"
                    except ClientError as exc:
                        error, outcome = exc, "error"
                    finally:
                        printer.spinner = False
                        tg.cancel_scope.cancel()
        finally:
            printer.end_line()
        if error is not None:
            raise error
        if outcome == "ok" and self.show_stats and stream.stats is not None and not self.as_json:
            s = stream.stats
            sys.stderr.write(
                f"[{s.backend} · {s.model} · TTFT {s.ttft_ms:.0f} ms · {s.tokens} tokens · "
                f"{s.tokens_per_s:.1f} tokens/s · {s.finish_reason}]\n"
            )
            sys.stderr.flush()
        return outcome


async def _spin(printer: _Printer) -> None:
    import anyio

    start = anyio.current_time()
    frame = 0
    await anyio.sleep(0.1)  # a warm model answers before the spinner would even show
    while printer.spinner:  # checked after each sleep, so no frame lands after a token
        printer.spin(frame, anyio.current_time() - start)
        frame += 1
        await anyio.sleep(0.1)


def _run_turn(portal: Any, session: _Session, content: str) -> str:
    """Run one reply in the loop thread; Ctrl-C here cancels it (``"cancelled"``)."""
    import anyio

    scope = portal.call(anyio.CancelScope)
    future = portal.start_task_soon(session.reply, content, scope)
    interrupted = False
    while True:
        try:
            outcome = future.result()
            return "cancelled" if interrupted else outcome
        except KeyboardInterrupt:
            interrupted = True
            portal.call(scope.cancel)


def _error_exit(exc: Exception, as_json: bool) -> Exit:
    from .client import ClientError

    if as_json and isinstance(exc, ClientError):
        import json

        sys.stdout.write(json.dumps({"type": "error", "code": exc.code, "message": exc.message}) + "\n")
    message = exc.message if isinstance(exc, ClientError) and exc.code == "not_running" else f"conductor: {exc}"
    return Exit(1, message)


def _interactive(portal: Any, session: _Session) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover
        pass
    from .client import ClientError
    from .termsafe import strip_controls

    welcome = session.client.welcome
    current = session.model or welcome.default_model or "the default model"
    sys.stderr.write(f"connected to conductor {welcome.server_version} · model {current} · /help for commands\n")
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            arg = arg.strip()
            if command in ("/quit", "/bye", "/exit"):
                return
            if command == "/help":
                print(HELP_TEXT)
            elif command == "/model":
                if arg:
                    session.model = arg
                    print(f"model: {arg}")
                else:
                    print(f"model: {session.model or welcome.default_model or '(server default)'}")
            elif command == "/new":
                import uuid

                session.conversation = f"chat-{uuid.uuid4().hex[:8]}"
                print(f"new conversation: {session.conversation}")
            elif command == "/history":
                try:
                    messages = portal.call(session.client.history, session.conversation or "default")
                except ClientError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    continue
                for m in messages:
                    mark = " (interrupted)" if m.interrupted else ""
                    print(f"{m.role}{mark}: {strip_controls(m.content)}")
                if not messages:
                    print("(no messages yet)")
            else:
                print(f"unknown command {command}; /help lists the commands", file=sys.stderr)
            continue
        try:
            if _run_turn(portal, session, line) == "cancelled":
                sys.stderr.write("(reply cancelled)\n")
        except ClientError as exc:
            sys.stderr.write(f"error: {exc.message}\n")
            if exc.code in ("connection_closed", "not_running"):
                raise


def _with_client(socket_path: str, as_json: bool, body: Any) -> None:
    """Open the loop thread and the connection, run ``body(portal, client)``, map errors to exits."""
    from anyio.from_thread import start_blocking_portal

    from .client import ClientError, connect_unix

    with start_blocking_portal("asyncio") as portal:
        try:
            with portal.wrap_async_context_manager(connect_unix(socket_path, surface="conductor-chat")) as client:
                body(portal, client)
        except ClientError as exc:
            raise _error_exit(exc, as_json) from None


def _main(fn: Any) -> None:
    try:
        fn()
    except Exit as exc:
        if exc.message:
            click.echo(exc.message, err=True)
        sys.exit(exc.code)


@click.command()
@click.argument("prompt", nargs=-1)
@click.option("--model", "-m", help="Model to use (default: the conductor's default model).")
@click.option("--conversation", "-c", help="Conversation name within this session (default: default).")
@click.option("--system", "-s", help="System prompt for the conversation.")
@click.option("--stats", is_flag=True, help="After each reply, print backend, model, TTFT and tokens/s to stderr.")
@click.option("--socket", "socket_opt", type=click.Path(dir_okay=False), help="Socket path (default: $CONDUCTOR_SOCKET, then the config's, then the default).")
@click.option("--config", "config_opt", type=click.Path(dir_okay=False), help="conductor.toml to take the socket path from.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event (token, done, error).")
def chat(prompt, model, conversation, system, stats, socket_opt, config_opt, as_json):
    """Chat with the running conductor.

    \b
    Interactive when stdin is a terminal; one-shot otherwise:
      conductor chat                      # interactive, /help for commands
      conductor chat "Why is the sky blue?"
      echo "Why is the sky blue?" | conductor chat
    """

    def run() -> None:
        path = _socket_for(socket_opt, config_opt)
        content = " ".join(prompt) if prompt else None
        if content is None and not sys.stdin.isatty():
            content = sys.stdin.read()
            if not content.strip():
                raise Exit(1, "conductor: no prompt on stdin")
        if content is not None and not content.strip():
            raise Exit(1, "conductor: the prompt is empty")

        def body(portal: Any, client: Any) -> None:
            session = _Session(client, model=model, conversation=conversation, system=system, stats=stats, as_json=as_json)
            if content is None:
                _interactive(portal, session)
            elif _run_turn(portal, session, content) == "cancelled":
                raise Exit(130)

        _with_client(path, as_json, body)

    _main(run)


def _socket_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)
    fn = click.option("--config", "config_opt", type=click.Path(dir_okay=False), help="conductor.toml to take the socket path from.")(fn)
    return click.option("--socket", "socket_opt", type=click.Path(dir_okay=False), help="Socket path.")(fn)


@click.command()
@_socket_options
def models(socket_opt, config_opt, as_json):
    """List the models the running conductor can serve."""

    def run() -> None:
        def body(portal: Any, client: Any) -> None:
            infos = portal.call(client.models)
            if as_json:
                import msgspec

                click.echo(msgspec.json.encode(infos).decode())
                return
            for m in infos:
                loaded = "" if m.loaded is None else ("  loaded" if m.loaded else "")
                click.echo(f"{m.name}\t{m.backend}{loaded}")
            if not infos:
                click.echo("no models (is a backend configured and running?)", err=True)

        _with_client(_socket_for(socket_opt, config_opt), as_json, body)

    _main(run)


@click.command()
@_socket_options
def status(socket_opt, config_opt, as_json):
    """Show the running conductor's state: backends, sessions, chats in flight."""

    def run() -> None:
        def body(portal: Any, client: Any) -> None:
            reply = portal.call(client.status)
            if as_json:
                import msgspec

                click.echo(msgspec.json.encode(reply).decode())
                return
            click.echo(f"conductor {reply.server_version} · up {reply.uptime_s:.0f} s · router {reply.router}")
            click.echo(f"sessions: {reply.sessions} · chats in flight: {reply.active_chats}")
            click.echo(f"transports: {', '.join(reply.transports) or 'none'}")
            for name, info in reply.backends.items():
                routing = info.pop("router", None)
                details = ", ".join(f"{k}={v}" for k, v in info.items())
                click.echo(f"backend {name}: {details}")
                if routing:
                    click.echo("  router: " + ", ".join(f"{k}={v}" for k, v in routing.items() if v is not None))

        _with_client(_socket_for(socket_opt, config_opt), as_json, body)

    _main(run)
