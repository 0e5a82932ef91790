"""The layout rules of DESIGN.md, checked on the source (ast, no imports run).

* ``dimsekit/ul/`` and ``dimsekit/dimse/`` are sans-I/O: they import neither
  ``twisted`` nor ``socket`` nor ``time``, in any import form.
* The core package ``dimsekit`` never imports ``dimsekit_plugins``: built-in
  plugins are found through entry points, like third-party ones.
* ``twisted/plugins/`` has no ``__init__.py`` (it is a namespace twistd scans).
* No module passes 1500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dimsekit"
SANS_IO = ("ul", "dimse")
FORBIDDEN_IN_SANS_IO = frozenset({"twisted", "socket", "time"})
_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def imported_modules(source: str, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in ``source``.

    ``module`` is the dotted name of the module the source belongs to (used to
    resolve relative imports).  Covers ``import a.b``, ``from a.b import c``
    (yielding ``a.b`` and ``a.b.c``), relative imports, imports nested in
    functions, classes, ``if TYPE_CHECKING`` and ``try`` blocks, and
    ``importlib.import_module("a")`` / ``__import__("a")`` with a literal name.
    """
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = parts[: len(parts) - (node.level - 1)]
                if node.module:
                    base.append(node.module)
                origin = ".".join(base)
            else:
                origin = node.module or ""
            yield node.lineno, origin
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{origin}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _IMPORT_FUNCTIONS and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    yield node.lineno, first.value


def top_level(name: str) -> str:
    return name.split(".", 1)[0]


def python_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts[-1:] = []
        parts.append("__init__")  # so that relative imports resolve against the package itself
    return ".".join(parts)


def violations(paths: list[Path], forbidden: frozenset[str]) -> list[str]:
    found = []
    for path in paths:
        source = path.read_text(encoding="utf-8")
        for line, name in imported_modules(source, module_name(path)):
            if top_level(name) in forbidden:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return sorted(set(found))


SANS_IO_FILES = [p for sub in SANS_IO for p in python_files(PACKAGE / sub)]


def test_sans_io_packages_exist():
    assert len(SANS_IO_FILES) >= 4
    assert {p.parent.name for p in SANS_IO_FILES} == set(SANS_IO)


@pytest.mark.parametrize("path", SANS_IO_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sans_io_imports_no_twisted_socket_or_time(path):
    assert violations([path], FORBIDDEN_IN_SANS_IO) == []


def test_core_never_imports_builtin_plugins():
    files = python_files(PACKAGE)
    assert PACKAGE / "ae.py" in files
    assert violations(files, frozenset({"dimsekit_plugins"})) == []


def test_twisted_plugins_is_a_namespace():
    plugins = ROOT / "twisted" / "plugins"
    assert (plugins / "dimsekit_plugin.py").is_file()
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (plugins / "__init__.py").exists()


@pytest.mark.parametrize(
    "path", python_files(PACKAGE) + python_files(ROOT / "dimsekit_plugins"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_module_passes_1500_lines(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= 1500, f"{path.relative_to(ROOT)} has {lines} lines: split it"


# -- the scanner sees every import form ---------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import time as clock",
        "import os, socket",
        "import twisted.internet.reactor",
        "from twisted.internet import reactor",
        "from time import monotonic",
        "from socket import *",
        "def later():\n    import time\n",
        "class C:\n    from socket import socket\n",
        "try:\n    import twisted\nexcept ImportError:\n    pass\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import twisted\n",
        "import importlib\nimportlib.import_module('time')",
        "from importlib import import_module\nimport_module('twisted.internet')",
        "__import__('socket')",
    ],
)
def test_scanner_catches(source):
    names = {top_level(n) for _, n in imported_modules(source, "dimsekit.ul.pdu")}
    assert names & FORBIDDEN_IN_SANS_IO, source


@pytest.mark.parametrize(
    "source",
    [
        "import datetime",
        "from dimsekit.ul import fsm",
        "from . import time_helpers",
        "x = 'import time'",
        "# import socket",
        "timeout = 3",
    ],
)
def test_scanner_lets_pass(source):
    names = {top_level(n) for _, n in imported_modules(source, "dimsekit.ul.pdu")}
    assert not names & FORBIDDEN_IN_SANS_IO, source


def test_relative_imports_resolve():
    found = {n for _, n in imported_modules("from . import fsm\nfrom ..errors import X", "dimsekit.ul.pdu")}
    assert {"dimsekit.ul", "dimsekit.ul.fsm", "dimsekit.errors", "dimsekit.errors.X"} <= found
    found = {n for _, n in imported_modules("from .fsm import State", "dimsekit.ul.__init__")}
    assert "dimsekit.ul.fsm" in found
