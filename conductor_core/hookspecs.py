"""Every hook a conductor plugin can implement. This file is the whole plugin contract.

Registration hooks are called once at start-up and hand the kernel typed factories through a
``register`` callback; the kernel validates and freezes them into plain dicts, so no pluggy
call ever happens per request or per token. pluggy passes only the arguments an
implementation names, so hooks can gain arguments without breaking plugins.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

__all__ = ["hookimpl", "hookspec"]

hookspec = HookspecMarker("conductor")
hookimpl = HookimplMarker("conductor")


@hookspec
def conductor_register_backends(register):
    """Register backend types: ``register(type_name, factory, config_type, default=None, order=100)``.

    ``factory(name, config) -> Backend`` builds one configured instance; ``config_type`` is a
    msgspec Struct that validates the ``[backends.NAME]`` table (less ``type``). ``default``, if
    given, is the table used for an instance named ``type_name`` when no config file exists;
    ``order`` ranks default instances (lower first)::

        class EchoConfig(msgspec.Struct, forbid_unknown_fields=True):
            prefix: str = ""

        @hookimpl
        def conductor_register_backends(register):
            register("echo", EchoBackend, EchoConfig, default={}, order=90)
    """


@hookspec
def conductor_register_transports(register):
    """Register transport types: ``register(type_name, factory, config_type, default=None)``.

    ``factory(name, config) -> Transport``; a transport has
    ``async serve(conductor, *, task_status)`` that calls ``task_status.started()`` once it
    accepts connections and hands each one to ``conductor.serve_channel(...)``::

        @hookimpl
        def conductor_register_transports(register):
            register("unix", UnixTransport, UnixConfig, default={})
    """


@hookspec
def conductor_register_routers(register):
    """Register router types: ``register(type_name, factory, config_type, default=None, order=100)``.

    A router registered with ``default`` (a table) becomes the router when the config has no
    ``[router]`` table; the lowest ``order`` wins, and without any the built-in ``priority`` is used.

    ``factory(config, backends) -> Router`` where ``backends`` is the ordered list of built
    backends::

        @hookimpl
        def conductor_register_routers(register):
            register("priority", PriorityRouter, PriorityConfig)
    """


@hookspec
def conductor_register_avatar_caches(register):
    """Register avatar cache types: ``register(type_name, factory, config_type)``.

    ``factory(config) -> AvatarCache`` (see :mod:`conductor_core.avatar_cache`); ``config_type``
    validates the ``[avatar.cache]`` table (less ``type``)::

        @hookimpl
        def conductor_register_avatar_caches(register):
            register("memory", MemoryAvatarCache, MemoryCacheConfig)
    """


@hookspec
def conductor_register_commands(cli):
    """Add click commands to the ``conductor`` command group::

        @hookimpl
        def conductor_register_commands(cli):
            @cli.command()
            def hello():
                "Say hello"
                click.echo("hello")
    """


@hookspec
def conductor_startup(conductor):
    """Called once after every component is built, before transports accept connections.

    May be ``async def``; the kernel awaits it. Keep it fast: start-up never waits on a backend::

        @hookimpl
        async def conductor_startup(conductor):
            conductor.log.info("backends: %s", list(conductor.backends))
    """


@hookspec
def conductor_shutdown(conductor):
    """Called once at shutdown after transports stopped, before backends close. May be async::

        @hookimpl
        def conductor_shutdown(conductor):
            print("bye")
    """
