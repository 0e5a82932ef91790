"""The plugin manager: built-in and third-party plugins, found the same way.

:func:`make_plugin_manager` returns a fresh :class:`pluggy.PluginManager`
(never a global) with the hook specifications of :mod:`dimsekit.hookspecs`
and every plugin registered under the ``dimsekit`` entry-point group,
except those blocked by name (argument ``blocked`` or the environment
variable ``DIMSEKIT_DISABLE_PLUGINS``, comma separated).  Built-in plugins
(``dimsekit_plugins.*``) are listed as entry points in setup.cfg: the core
never imports them.

``DIMSEKIT_TRACE_HOOKS=1`` logs every hook call and its result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pluggy
from twisted.logger import Logger

from dimsekit import hookspecs

__all__ = ["make_plugin_manager", "blocked_from_environment"]

_log = Logger(namespace="dimsekit.plugin")


def blocked_from_environment(environ: dict[str, str] | None = None) -> set[str]:
    """Names listed in ``DIMSEKIT_DISABLE_PLUGINS`` (comma separated, blanks ignored)."""
    value = (environ if environ is not None else os.environ).get("DIMSEKIT_DISABLE_PLUGINS", "")
    return {name.strip() for name in value.split(",") if name.strip()}


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    blocked: Iterable[str] = (),
    plugins: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Make a plugin manager with dimsekit's hooks.

    :param load_entrypoints: load the ``dimsekit`` entry-point group
        (built-in plugins included).
    :param blocked: plugin names not to load (added to ``DIMSEKIT_DISABLE_PLUGINS``).
    :param plugins: extra plugin objects to register (tests, embedding apps).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in set(blocked) | blocked_from_environment():
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    if os.environ.get("DIMSEKIT_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda text: _log.debug("{text}", text=text.rstrip()))
        pm.enable_tracing()
    return pm
