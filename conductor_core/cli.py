"""The ``conductor`` command. Imports stay lazy: ``conductor chat`` start-up time is measured,
so plugins are only loaded by the commands that need them (``serve``, ``plugins``, ``config``,
and any command a plugin adds through ``conductor_register_commands``)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

import click

__all__ = ["cli", "main"]

LAZY_COMMANDS = {
    "chat": "conductor_core.chat_cli:chat",
    "models": "conductor_core.chat_cli:models",
    "status": "conductor_core.chat_cli:status",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        self._load_plugin_commands()
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                return _unavailable(name, exc)
        command = super().get_command(ctx, name)
        if command is None:
            self._load_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def _load_plugin_commands(self) -> None:
        if getattr(self, "_plugins_loaded", False):
            return
        self._plugins_loaded = True
        from .plugins import pm, load_plugins

        load_plugins()
        pm.hook.conductor_register_commands(cli=self)


def _unavailable(name: str, exc: ImportError) -> click.Command:
    """A broken install must not break ``--help`` for every other command."""

    def fail():
        raise click.ClickException(f"`conductor {name}` is not available: {exc}")

    return click.Command(name, callback=fail, help=f"(unavailable: {exc})")


@click.group(cls=LazyGroup)
@click.version_option(package_name="conductor", prog_name="conductor")
def cli():
    """Conductor: a local daemon between chat surfaces and LLM backends.

    \b
    Quick start:
      conductor serve            # start on the default configuration
      conductor chat "hello"     # ask it something from another terminal
    """


def _config_or_exit(path):
    from .config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"conductor: config error: {exc}", err=True)
        sys.exit(2)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="conductor.toml to use.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
def serve(config_path, log_level):
    """Start the conductor and serve until SIGINT/SIGTERM."""
    config = _config_or_exit(config_path)
    logging.basicConfig(
        level=(log_level or config.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    from .config import ConfigError
    from .kernel import Conductor
    from .plugins import RegistrationError, get_registry, load_errors

    try:
        conductor = Conductor.from_config(config, get_registry())
    except ConfigError as exc:
        click.echo(f"conductor: config error: {exc}", err=True)
        sys.exit(2)
    except RegistrationError as exc:
        click.echo(f"conductor: plugin error: {exc}", err=True)
        sys.exit(2)
    for dist, error in load_errors:
        click.echo(f"conductor: warning: plugin {dist} failed to load: {error}", err=True)
    if not conductor.transports:
        click.echo("conductor: warning: no transport configured; nothing can connect", err=True)
    from .errors import StartupError
    from .runner import run_until_signalled

    try:
        run_until_signalled(conductor)
    except* (StartupError, OSError) as group:
        first = _first_leaf(group)
        click.echo(f"conductor: cannot start: {first}", err=True)
        sys.exit(1)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Include the kernel's built-in plugins.")
def plugins(as_json, show_all):
    """List the installed plugins: distribution, version, hooks."""
    import msgspec

    from .plugins import get_plugins, load_errors

    infos = get_plugins(include_builtins=show_all)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "plugins": msgspec.to_builtins(infos),
                    "errors": [{"distribution": d, "error": e} for d, e in load_errors],
                },
                indent=2,
            )
        )
        return
    if not infos:
        click.echo("no plugins loaded" + (" (CONDUCTOR_LOAD_PLUGINS is set)" if "CONDUCTOR_LOAD_PLUGINS" in os.environ else ""))
    for p in infos:
        click.echo(f"{p.distribution} {p.version}{' (built-in)' if p.builtin else ''}")
        click.echo(f"  hooks: {', '.join(p.hooks)}")
    for dist, error in load_errors:
        click.echo(f"{dist}: FAILED TO LOAD: {error}", err=True)


@cli.command("config")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="conductor.toml to read.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_config(config_path, as_json):
    """Print the effective configuration (secrets redacted) and where it came from.

    \b
    Top-level keys: default_model, system_prompt, shutdown_grace_s, log_level,
    [backends.NAME], [transports.NAME], [router], [limits], [history].
    """
    import msgspec

    from .config import ConfigError, redacted, resolve_components
    from .plugins import RegistrationError, get_registry

    config = _config_or_exit(config_path)
    try:
        specs = resolve_components(config, get_registry())
    except ConfigError as exc:
        click.echo(f"conductor: config error: {exc}", err=True)
        sys.exit(2)
    except RegistrationError as exc:
        click.echo(f"conductor: plugin error: {exc}", err=True)
        sys.exit(2)
    data = msgspec.to_builtins(config)
    source = data.pop("source")
    for kind in ("backends", "transports"):
        data[kind] = {
            s.name: {"type": s.registration.type_name, **msgspec.to_builtins(s.config)} for s in specs[kind]
        }
    (router,) = specs["routers"]
    data["router"] = {"type": router.registration.type_name, **msgspec.to_builtins(router.config)}
    data = redacted(data)
    if as_json:
        click.echo(json.dumps({"source": source, "config": data}, indent=2))
    else:
        click.echo(f"# source: {source}")
        click.echo(json.dumps(data, indent=2))


def main() -> None:
    cli(prog_name="conductor")
