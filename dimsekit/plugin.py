"""The plugin manager: built-in and third-party plugins, found the same way.

:func:`make_plugin_manager` returns a fresh :class:`pluggy.PluginManager`
(never a global) with the hook specifications of :mod:`dimsekit.hookspecs`
and every plugin registered under the ``dimsekit`` entry-point group,
except those blocked by name (argument ``blocked`` or the environment
variable ``DIMSEKIT_DISABLE_PLUGINS``, comma separated).  Built-in plugins
(``dimsekit_plugins.*``) are listed as entry points in setup.cfg: the core
never imports them.

``DIMSEKIT_TRACE_HOOKS=1`` logs every hook call and its result.

:func:`broadcast` calls a broadcast hook at an association boundary the way
pluggy does, for less (see there); :func:`notify` calls it so that a plugin
that raises stops neither the other plugins nor the caller.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pluggy
from twisted.logger import Logger

try:
    from pluggy._callers import _multicall as _PLAIN_HOOKEXEC
except ImportError:  # pragma: no cover - a pluggy without it: broadcast() always calls the hook
    _PLAIN_HOOKEXEC = None  # type: ignore[assignment]

from dimsekit import hookspecs

__all__ = ["make_plugin_manager", "blocked_from_environment", "broadcast", "notify"]

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
    :param plugins: extra plugin objects to register (tests, embedding apps);
        one that an entry point already loaded is registered once, under its
        entry-point name.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in set(blocked) | blocked_from_environment():
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    for plugin in plugins:
        if not pm.is_registered(plugin):  # an entry point loaded it already (or it is listed twice)
            pm.register(plugin)
    pm.check_pending()
    if os.environ.get("DIMSEKIT_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda text: _log.debug("{text}", text=text.rstrip()))
        pm.enable_tracing()
    return pm


def broadcast(pm: pluggy.PluginManager, hook: pluggy.HookCaller, **kwargs: object) -> None:
    """Call ``hook`` (a broadcast hook of ``pm``: not firstresult, not
    historic) with ``kwargs``, for what its implementations do; their results
    are not collected.

    What ``hook(**kwargs)`` does, minus pluggy's machinery for what a plain
    call does not need: the implementations are called in pluggy's order
    (last registered first, ``tryfirst``/``trylast`` honoured), each with the
    arguments it names, and an exception goes up at once (the rest are not
    called).  ``hook(**kwargs)`` itself is called instead whenever something
    would make a difference: a wrapper among the implementations, or the
    manager's calls traced or monitored (``DIMSEKIT_TRACE_HOOKS``,
    ``add_hookcall_monitoring``) -- and with no implementation at all, nothing
    is called.  The association boundary hooks take this way (through
    :func:`notify`): one call of each per association, ~1.4 us less each.

    ``kwargs`` must name every argument of the hook's specification.
    """
    impls = _plain_call_order(pm, hook)
    if impls is None:
        hook(**kwargs)
        return
    for impl in impls:
        impl.function(*[kwargs[name] for name in impl.argnames])


def notify(pm: pluggy.PluginManager, hook: pluggy.HookCaller, **kwargs: object) -> None:
    """Call ``hook`` as :func:`broadcast` does, but never raise: an
    implementation that raises is logged with its traceback, naming its
    plugin and the hook, and the implementations after it are still called.

    For the notifications a plugin reacts to (an association's end, an
    instance stored, the node started): one plugin's bug must not keep the
    others from their work (the storage plugin's clean-up at an
    association's end), nor reach the protocol that reported the event.
    When pluggy's own call is needed (a wrapper, tracing or monitoring; see
    :func:`broadcast`) the hook is called once, and an exception ends that
    call and is logged.
    """
    impls = _plain_call_order(pm, hook)
    if impls is None:
        try:
            hook(**kwargs)
        except Exception:
            _log.failure("a plugin failed in {hook}", hook=hook.name)
        return
    for impl in impls:
        try:
            impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception:
            _log.failure("plugin {plugin} failed in {hook}", plugin=impl.plugin_name, hook=hook.name)


def _plain_call_order(pm: pluggy.PluginManager, hook: pluggy.HookCaller) -> list | None:
    """The implementations of ``hook`` in pluggy's call order, or None when
    pluggy must make the call itself (a wrapper, tracing, monitoring)."""
    if _PLAIN_HOOKEXEC is None or getattr(pm, "_inner_hookexec", None) is not _PLAIN_HOOKEXEC:
        return None
    impls = hook.get_hookimpls()  # a copy: an implementation may register another plugin
    for impl in impls:
        if impl.hookwrapper or impl.wrapper:
            return None
    impls.reverse()
    return impls
