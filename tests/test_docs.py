"""The plugin API is documented: every hook follows the one docstring template.

``dimsekit/hookspecs.py`` is the API plugin authors read (STYLE habit 12).
Each hook's docstring has a summary line; says what the return value means
("Return value: ..."); for a ``firstresult`` hook, "Stops at the first
non-None result"; a ``:param name:`` line per parameter; and "Added in API
version N".  This test fails as soon as a hook is added without that.
"""

from __future__ import annotations

import inspect
import re
import types

import pytest

from dimsekit import hookspecs
from dimsekit.hookspecs import PLUGIN_API_VERSION, PROJECT_NAME, hookspec

_SPEC_ATTRIBUTE = f"{PROJECT_NAME}_spec"
_ADDED = re.compile(r"Added in API version (\d+)\.")


def hooks_of(module: types.ModuleType) -> dict[str, types.FunctionType]:
    """The hook specifications of a module (functions marked with ``hookspec``)."""
    return {
        name: value
        for name, value in vars(module).items()
        if inspect.isfunction(value) and hasattr(value, _SPEC_ATTRIBUTE)
    }


def template_problems(function: types.FunctionType) -> list[str]:
    """What the hook's docstring lacks of the template (empty when complete)."""
    doc = inspect.getdoc(function)
    if not doc:
        return ["no docstring"]
    problems = []
    summary = doc.splitlines()[0].strip()
    if not summary or not summary.endswith("."):
        problems.append("the first line is not a one-sentence summary")
    if "Return value:" not in doc:
        problems.append('it does not say what the return value means ("Return value: ...")')
    firstresult = getattr(function, _SPEC_ATTRIBUTE).get("firstresult", False)
    stops = "Stops at the first non-None result" in " ".join(doc.split())
    if firstresult and not stops:
        problems.append('a firstresult hook must say "Stops at the first non-None result"')
    if stops and not firstresult:
        problems.append('only a firstresult hook stops at the first non-None result')
    for parameter in inspect.signature(function).parameters:
        if f":param {parameter}:" not in doc:
            problems.append(f"parameter {parameter!r} is not documented (:param {parameter}:)")
    added = _ADDED.search(doc)
    if added is None:
        problems.append('it does not say "Added in API version N."')
    elif not 1 <= int(added.group(1)) <= PLUGIN_API_VERSION:
        problems.append(f"API version {added.group(1)} is not between 1 and {PLUGIN_API_VERSION}")
    return problems


HOOKS = hooks_of(hookspecs)


def test_there_are_hooks():
    assert {"dimsekit_configure", "dimsekit_service_classes", "dimsekit_accept_association"} <= set(HOOKS)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_follows_the_template(name):
    problems = template_problems(HOOKS[name])
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_names_follow_the_pattern(name):
    # dimsekit_ + verb, or dimsekit_on_ + event
    assert re.fullmatch(r"dimsekit_(on_)?[a-z][a-z_]*[a-z]", name), name


def test_every_dimsekit_function_is_a_hook():
    # A function named like a hook but not marked would silently not be one.
    unmarked = [
        name
        for name, value in vars(hookspecs).items()
        if name.startswith(f"{PROJECT_NAME}_") and inspect.isfunction(value) and name not in HOOKS
    ]
    assert unmarked == []


def test_module_documents_the_api_version():
    assert hookspecs.__doc__ and "PLUGIN_API_VERSION" in hookspecs.__doc__


# -- the checker itself catches what it should --------------------------------------------


def _fake_module(**functions) -> types.ModuleType:
    module = types.ModuleType("fake_hookspecs")
    for name, function in functions.items():
        function.__name__ = name
        setattr(module, name, function)
    return module


def test_checker_fails_on_an_undocumented_hook():
    @hookspec
    def dimsekit_undocumented(thing):
        pass

    module = _fake_module(dimsekit_undocumented=dimsekit_undocumented)
    assert template_problems(hooks_of(module)["dimsekit_undocumented"]) == ["no docstring"]


def test_checker_names_each_missing_part():
    @hookspec(firstresult=True)
    def dimsekit_pick(thing):
        """Pick one"""

    problems = " | ".join(template_problems(dimsekit_pick))
    for part in ("summary", "Return value", "Stops at the first non-None result", "'thing'", "Added in API version"):
        assert part in problems


def test_checker_accepts_a_complete_docstring():
    @hookspec(firstresult=True)
    def dimsekit_pick(thing):
        """Pick a thing.

        Return value: the thing, or ``None``.  Stops at the first non-None
        result.

        :param thing: what to pick from.

        Added in API version 1.
        """

    assert template_problems(dimsekit_pick) == []
