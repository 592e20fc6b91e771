"""Registers the ``fake`` backend type. Loaded by the test fixtures, or by
``CONDUCTOR_EXTRA_PLUGINS=conductor_core.testing.fake_plugin`` for a real ``conductor serve``."""

from ..hookspecs import hookimpl
from .fakes import FakeBackend, FakeConfig


@hookimpl
def conductor_register_backends(register):
    register("fake", FakeBackend, FakeConfig)
