"""The plugin manager: built-ins, the registry, duplicate type names, broken plugins, and the
environment variables that pick what loads. Entry-point tests run ``conductor`` in a subprocess
with hand-made ``*.dist-info`` directories on PYTHONPATH, exactly as an installed plugin is seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from conductor_core import plugins
from conductor_core.plugins import RegistrationError, get_plugins, get_registry, load_plugins, pm
from conductor_core.routing import PriorityConfig, PriorityRouter

CONDUCTOR = str(Path(sys.executable).with_name("conductor"))


@pytest.fixture
def clean_plugins(monkeypatch):
    """In-process plugin state with nothing but the built-ins; restored (forgotten) after."""
    monkeypatch.setenv("CONDUCTOR_LOAD_PLUGINS", "")
    monkeypatch.delenv("CONDUCTOR_EXTRA_PLUGINS", raising=False)
    plugins.reset_for_tests()
    try:
        yield
    finally:
        plugins.reset_for_tests()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def backend_plugin(type_name: str) -> str:
    return f"""
    import msgspec
    from conductor_core import hookimpl

    class Cfg(msgspec.Struct):
        pass

    @hookimpl
    def conductor_register_backends(register):
        register({type_name!r}, object, Cfg)
    """


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write importable plugin modules: ``modules(name=source, ...)``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(**sources: str) -> None:
        for name, source in sources.items():
            write(tmp_path / f"{name}.py", source)

    yield make
    for name in list(sys.modules):
        if name.startswith("ptest_"):
            del sys.modules[name]


# ---------------------------------------------------------------- in process


def test_registry_contains_the_builtin_priority_router(clean_plugins):
    registry = get_registry()
    reg = registry.routers["priority"]
    assert reg.factory is PriorityRouter and reg.config_type is PriorityConfig
    assert reg.distribution == "conductor" and reg.kind == "routers"
    assert registry.backends == {} and registry.transports == {}


def test_builtins_are_listed_only_on_request(clean_plugins):
    assert get_plugins() == []
    builtins = {p.name: p for p in get_plugins(include_builtins=True)}
    assert set(builtins) == {"conductor_core.routing", "conductor_core.avatar_cache"}
    assert all((p.distribution, p.builtin) == ("conductor", True) for p in builtins.values())
    assert builtins["conductor_core.routing"].hooks == ["conductor_register_routers"]
    assert builtins["conductor_core.avatar_cache"].hooks == ["conductor_register_avatar_caches"]


def test_load_plugins_is_idempotent(clean_plugins, modules, monkeypatch):
    modules(ptest_one=backend_plugin("one"))
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "ptest_one")
    load_plugins()
    before = pm.list_name_plugin()
    load_plugins()
    assert pm.list_name_plugin() == before
    assert list(get_registry().backends) == ["one"]


def test_extra_plugins_by_import_path(clean_plugins, modules, monkeypatch):
    modules(ptest_one=backend_plugin("one"), ptest_two=backend_plugin("two"))
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", " ptest_one , ptest_two ,")
    infos = get_plugins()
    assert [(p.name, p.distribution, p.hooks) for p in infos] == [
        ("ptest_one", "ptest_one", ["conductor_register_backends"]),
        ("ptest_two", "ptest_two", ["conductor_register_backends"]),
    ]
    registry = get_registry()
    assert sorted(registry.backends) == ["one", "two"]
    assert registry.backends["two"].distribution == "ptest_two"


def test_duplicate_type_name_names_both_distributions(clean_plugins, modules, monkeypatch):
    modules(ptest_a=backend_plugin("same"), ptest_b=backend_plugin("same"))
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "ptest_a,ptest_b")
    with pytest.raises(RegistrationError) as info:
        get_registry()
    message = str(info.value)
    assert "ptest_a" in message and "ptest_b" in message and "'same'" in message


def test_same_name_in_different_kinds_is_fine(clean_plugins, modules, monkeypatch):
    modules(
        ptest_kinds="""
        import msgspec
        from conductor_core import hookimpl

        class Cfg(msgspec.Struct):
            pass

        @hookimpl
        def conductor_register_backends(register):
            register("x", object, Cfg)

        @hookimpl
        def conductor_register_transports(register):
            register("x", object, Cfg)
        """
    )
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "ptest_kinds")
    registry = get_registry()
    assert "x" in registry.backends and "x" in registry.transports


def test_a_builtin_type_name_cannot_be_taken(clean_plugins, modules, monkeypatch):
    modules(
        ptest_router="""
        import msgspec
        from conductor_core import hookimpl

        class Cfg(msgspec.Struct):
            pass

        @hookimpl
        def conductor_register_routers(register):
            register("priority", object, Cfg)
        """
    )
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "ptest_router")
    with pytest.raises(RegistrationError, match="conductor and ptest_router|ptest_router and conductor"):
        get_registry()


@pytest.mark.parametrize(
    "call, fragment",
    [
        ('register("", object, Cfg)', "non-empty string"),
        ("register(3, object, Cfg)", "non-empty string"),
        ('register("x", object, dict)', "msgspec.Struct"),
        ('register("x", object, Cfg())', "msgspec.Struct"),
        ('register("x", object)', "TypeError"),  # a plugin bug, not a kernel traceback
        ('raise ValueError("plugin bug")', "ValueError: plugin bug"),
    ],
)
def test_invalid_registration_is_a_registration_error_naming_the_plugin(clean_plugins, modules, monkeypatch, call, fragment):
    modules(
        ptest_bad=f"""
        import msgspec
        from conductor_core import hookimpl

        class Cfg(msgspec.Struct):
            pass

        @hookimpl
        def conductor_register_backends(register):
            {call}
        """
    )
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "ptest_bad")
    with pytest.raises(RegistrationError) as info:
        get_registry()
    assert "ptest_bad" in str(info.value) and fragment in str(info.value)


def test_broken_extra_plugin_is_reported_and_the_rest_load(clean_plugins, modules, monkeypatch):
    modules(ptest_good=backend_plugin("good"), ptest_broken='raise RuntimeError("boom on import")\n')
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "ptest_broken,ptest_missing_module,ptest_good")
    registry = get_registry()
    assert list(registry.backends) == ["good"] and "priority" in registry.routers
    errors = dict(plugins.load_errors)
    assert errors["ptest_broken"] == "RuntimeError: boom on import"
    assert errors["ptest_missing_module"].startswith("ModuleNotFoundError")


def test_a_hook_with_an_unknown_argument_is_a_load_error(clean_plugins, modules, monkeypatch):
    modules(
        ptest_typo="""
        from conductor_core import hookimpl

        @hookimpl
        def conductor_register_backends(registr):
            pass
        """
    )
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "ptest_typo")
    load_plugins()
    (dist, error) = plugins.load_errors[0]
    assert dist == "ptest_typo" and "registr" in error
    assert pm.get_plugin("ptest_typo") is None


def test_reset_for_tests_forgets_everything(clean_plugins, modules, monkeypatch):
    modules(ptest_one=backend_plugin("one"))
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "ptest_one,ptest_missing_module")
    load_plugins()
    assert pm.get_plugin("ptest_one") is not None and plugins.load_errors
    plugins.reset_for_tests()
    assert pm.list_name_plugin() == [] and plugins.load_errors == []
    monkeypatch.delenv("CONDUCTOR_EXTRA_PLUGINS")
    assert get_registry().backends == {}


def test_registry_is_plain_data():
    """The hot path reads plain dicts, never pm.hook: a Registry has no reference to pluggy."""
    registry = plugins.Registry()
    assert isinstance(registry, msgspec.Struct)
    assert plugins.Registry().backends is not registry.backends


# ---------------------------------------------------------------- real entry points, in a subprocess


def make_dist(site: Path, dist: str, version: str, package: str, source: str, ep_name: str | None = None) -> None:
    write(site / package / "__init__.py", source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    write(info / "entry_points.txt", f"[conductor]\n{ep_name or package} = {package}\n")


GOOD = """
import click
import msgspec
from conductor_core import hookimpl

class Cfg(msgspec.Struct, forbid_unknown_fields=True):
    pass

@hookimpl
def conductor_register_backends(register):
    register("goodtype", object, Cfg)

@hookimpl
def conductor_register_commands(cli):
    @cli.command("good-hello")
    def good_hello():
        "Say hello from a plugin."
        click.echo("hello from conductor-good")
"""


@pytest.fixture
def site(tmp_path) -> Path:
    site = tmp_path / "site"
    make_dist(site, "conductor-good", "1.2.3", "ptest_good_pkg", GOOD)
    make_dist(site, "conductor-broken", "0.0.1", "ptest_broken_pkg", 'raise RuntimeError("boom on import")\n')
    return site


def conductor(tmp_path, site, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
    full_env.update(
        PYTHONPATH=str(site), HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"), **env
    )
    return subprocess.run(
        [CONDUCTOR, *args], capture_output=True, text=True, env=full_env, timeout=60, cwd=tmp_path, check=False
    )


MINE = "conductor-good,conductor-broken"


def test_plugins_lists_the_good_and_reports_the_broken(tmp_path, site):
    result = conductor(tmp_path, site, "plugins", CONDUCTOR_LOAD_PLUGINS=MINE)
    assert result.returncode == 0, result.stderr
    assert "conductor-good 1.2.3\n  hooks: conductor_register_backends, conductor_register_commands\n" in result.stdout
    assert "conductor-broken" not in result.stdout
    assert "conductor-broken: FAILED TO LOAD: RuntimeError: boom on import" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugins_json(tmp_path, site):
    result = conductor(tmp_path, site, "plugins", "--json", CONDUCTOR_LOAD_PLUGINS=MINE)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["plugins"] == [
        {
            "name": "ptest_good_pkg",
            "distribution": "conductor-good",
            "version": "1.2.3",
            "hooks": ["conductor_register_backends", "conductor_register_commands"],
            "builtin": False,
        }
    ]
    assert out["errors"] == [{"distribution": "conductor-broken", "error": "RuntimeError: boom on import"}]


def test_plugins_all_includes_the_builtin(tmp_path, site):
    out = json.loads(conductor(tmp_path, site, "plugins", "--json", "--all", CONDUCTOR_LOAD_PLUGINS="").stdout)
    assert [(p["distribution"], p["builtin"]) for p in out["plugins"]] == [("conductor", True)] * 2


def test_without_the_variable_every_installed_plugin_loads(tmp_path, site):
    out = json.loads(conductor(tmp_path, site, "plugins", "--json").stdout)
    assert "conductor-good" in [p["distribution"] for p in out["plugins"]]
    assert {"distribution": "conductor-broken", "error": "RuntimeError: boom on import"} in out["errors"]


def test_empty_load_plugins_lists_none(tmp_path, site):
    result = conductor(tmp_path, site, "plugins", CONDUCTOR_LOAD_PLUGINS="")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == "no plugins loaded (CONDUCTOR_LOAD_PLUGINS is set)\n"
    out = json.loads(conductor(tmp_path, site, "plugins", "--json", CONDUCTOR_LOAD_PLUGINS="").stdout)
    assert out == {"plugins": [], "errors": []}


@pytest.mark.parametrize("selector", ["conductor-good", "conductor_good", "Conductor.Good", "ptest_good_pkg", " conductor-good ,"])
def test_load_plugins_selects_one_distribution(tmp_path, site, selector):
    out = json.loads(conductor(tmp_path, site, "plugins", "--json", CONDUCTOR_LOAD_PLUGINS=selector).stdout)
    assert [p["distribution"] for p in out["plugins"]] == ["conductor-good"]
    assert out["errors"] == []  # the broken one was never imported


def test_extra_plugins_loads_a_module_by_import_path(tmp_path, site):
    write(site / "ptest_extra.py", backend_plugin("extra"))
    out = json.loads(
        conductor(tmp_path, site, "plugins", "--json", CONDUCTOR_LOAD_PLUGINS="", CONDUCTOR_EXTRA_PLUGINS="ptest_extra").stdout
    )
    assert [(p["name"], p["version"]) for p in out["plugins"]] == [("ptest_extra", "(CONDUCTOR_EXTRA_PLUGINS)")]


def test_a_plugin_can_add_a_command(tmp_path, site):
    result = conductor(tmp_path, site, "good-hello", CONDUCTOR_LOAD_PLUGINS="conductor-good")
    assert (result.returncode, result.stdout) == (0, "hello from conductor-good\n"), result.stderr
    help_text = conductor(tmp_path, site, "--help", CONDUCTOR_LOAD_PLUGINS="conductor-good").stdout
    assert "good-hello" in help_text


def test_two_distributions_with_the_same_entry_point_name_are_both_accounted_for(tmp_path, site):
    make_dist(site, "conductor-twin", "2.0", "ptest_twin_pkg", backend_plugin("twin"), ep_name="ptest_good_pkg")
    out = json.loads(conductor(tmp_path, site, "plugins", "--json", CONDUCTOR_LOAD_PLUGINS="conductor-good,conductor-twin").stdout)
    loaded = [p["distribution"] for p in out["plugins"]]
    failed = [e["distribution"] for e in out["errors"]]
    assert sorted(loaded + failed) == ["conductor-good", "conductor-twin"]
    assert len(loaded) == 1


@pytest.fixture
def dup_site(site) -> Path:
    make_dist(site, "conductor-dup", "0.5", "ptest_dup_pkg", backend_plugin("goodtype"))
    return site


def test_serve_refuses_two_distributions_registering_the_same_type(tmp_path, dup_site):
    config = write(tmp_path / "c.toml", "")
    result = conductor(tmp_path, dup_site, "serve", "--config", str(config), CONDUCTOR_LOAD_PLUGINS="conductor-good,conductor-dup")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("conductor: plugin error: ")
    assert "'goodtype'" in line and "conductor-good" in line and "conductor-dup" in line


def test_config_command_refuses_duplicate_types_without_a_traceback(tmp_path, dup_site):
    result = conductor(tmp_path, dup_site, "config", CONDUCTOR_LOAD_PLUGINS="conductor-good,conductor-dup")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "conductor-good" in result.stderr and "conductor-dup" in result.stderr


# ---------------------------------------------------------------- the hook contract


def _hookspecs():
    from conductor_core import hookspecs

    return [(name, fn) for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "conductor_spec")]


def test_every_hook_is_named_conductor_and_has_an_example():
    specs = _hookspecs()
    assert {name for name, _ in specs} >= {
        "conductor_register_backends", "conductor_register_transports", "conductor_register_routers",
        "conductor_register_avatar_caches", "conductor_register_commands", "conductor_startup", "conductor_shutdown",
    }  # fmt: skip
    for name, fn in specs:
        assert name.startswith("conductor_"), name
        doc = fn.__doc__ or ""
        assert "::" in doc and "@hookimpl" in doc, f"{name} has no usage example"
        example = textwrap.dedent(doc.split("::", 1)[1])
        compile(example, f"<{name} example>", "exec")  # the example is valid Python


def test_registration_hooks_take_only_register():
    import inspect

    for name, fn in _hookspecs():
        if name.startswith("conductor_register_") and name != "conductor_register_commands":
            assert list(inspect.signature(fn).parameters) == ["register"], name
