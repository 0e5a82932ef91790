"""The plugin API is documented: every hook follows the one docstring template.

``dimsekit/hookspecs.py`` is the API plugin authors read (STYLE habit 12).
Each hook's docstring has a summary line; says what the return value means
("Return value: ..."); for a ``firstresult`` hook, "Stops at the first
non-None result"; a ``:param name:`` line per parameter; and "Added in API
version N".  This test fails as soon as a hook is added without that.

And the examples of README.md and docs/*.md run (see the section at the end).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

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


# -- the examples of README.md and docs/*.md run ----------------------------------------------
#
# Every ```python and ```toml block is run (a toml block is loaded as a node
# configuration, its plugin sections checked by the plugins), with what its
# surrounding prose gives it (an ``application``, a ``step``); an abridged
# one gets the names it leaves out.  A new example without a runner here
# fails test_every_example_has_a_runner.

_ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def examples() -> dict[str, str]:
    """``"<file>#<language><n>"`` -> the code of the n-th block of that language (from 1)."""
    found = {}
    for path in [_ROOT / "README.md", *sorted((_ROOT / "docs").glob("*.md"))]:
        counts: dict[str, int] = {}
        for match in _FENCE.finditer(path.read_text()):
            language = match.group(1)
            if language in ("python", "toml"):
                counts[language] = counts.get(language, 0) + 1
                found[f"{path.relative_to(_ROOT)}#{language}{counts[language]}"] = match.group(2)
    return found


EXAMPLES = examples()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(script: str) -> str:
    """Run ``script`` in a fresh interpreter (a real reactor, task.react's exit); its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=_ROOT, env=env, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def run_readme_client(code: str) -> None:
    # the SCU of the README against a node on a free port (the example's 11112)
    port = _free_port()
    out = _run(textwrap.dedent(f"""
        import dimsekit_plugins.verification as verification
        from dimsekit import ApplicationEntity, make_plugin_manager
        from dimsekit.service import DicomNodeService

        pm = make_plugin_manager(load_entrypoints=False, plugins=[verification])
        node = ApplicationEntity("DIMSEKIT", plugin_manager=pm)
        DicomNodeService(node, "tcp:{port}:interface=127.0.0.1").startService()
        """) + code.replace("11112", str(port)))
    assert out.strip() == "C-ECHO status 0x0000"


def run_readme_service(code: str) -> None:
    # the node of the README in an application, echoed by an SCU
    port = _free_port()
    out = _run("from twisted.application.service import Application, IService\n"
               "application = Application('readme')\n" + code.replace("11112", str(port)) + textwrap.dedent(f"""
        from twisted.internet import defer, task

        async def main(reactor):
            IService(application).startService()
            scu = ApplicationEntity("SCU", reactor=reactor)
            assoc = await scu.associate("127.0.0.1", {port}, called="MYNODE", contexts=["1.2.840.10008.1.1"])
            print(await assoc.echo())
            await assoc.release()
            await IService(application).stopService()

        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
        """))
    assert out.strip() == "0"


def run_ping_plugin(code: str) -> None:
    from dimsekit.plugin import make_plugin_manager
    from dimsekit.testing import AssociationPair

    module = types.ModuleType("myplugin.plugin")
    exec(compile(code, "plugin-guide: myplugin/plugin.py", "exec"), module.__dict__)
    pair = AssociationPair(make_plugin_manager(load_entrypoints=False, plugins=[module]))
    assoc = pair.associate(contexts=[module.PING])
    response = pair.result(assoc._request(module.PING, {"CommandField": 0x0030, "AffectedSOPClassUID": module.PING}))
    assert response.status == 0x0000


def run_observer_plugin(code: str) -> None:
    from dimsekit.hookspecs import hookimpl
    from dimsekit.plugin import make_plugin_manager
    from dimsekit.registry import ServiceClass
    from dimsekit.testing import AssociationPair
    from dimsekit.uids import VERIFICATION

    module = types.ModuleType("slowrequests")
    exec(compile(code, "plugin-guide: slow requests", "exec"), module.__dict__)
    said = []
    observers = []

    class Slow(module.SlowRequests):  # the guide's observer, logging into ``said``
        def __init__(self, log):
            super().__init__(said.append)
            observers.append(self)

    module.SlowRequests = Slow
    clock = [100.0]
    module.time = types.SimpleNamespace(monotonic=lambda: clock[0])
    delay = [0.0]

    class Echo:  # a C-ECHO SCP that takes ``delay`` seconds of the guide's clock
        @hookimpl
        def dimsekit_service_classes(self):
            def echo(request):
                clock[0] += delay[0]
                return 0x0000

            return [ServiceClass(name="verification", sop_classes=(VERIFICATION,), handlers={"C-ECHO": echo})]

    pair = AssociationPair(make_plugin_manager(load_entrypoints=False, plugins=[module, Echo()]))
    assoc = pair.associate(contexts=[VERIFICATION])
    assert pair.result(assoc.echo()) == 0x0000
    assert said == [] and len(observers) == 1  # the SCP's association, observed
    delay[0] = 2.5
    assert pair.result(assoc.echo()) == 0x0000
    assert said == ["C-ECHO from REQUESTOR: 0x0000 after 2.5 s"], said


def run_status_register(code: str) -> None:
    out = _run(code + "\nprint(status.describe(0xA701, 'ping'))")
    assert out.strip() == "0xA701 Refused: the ping is too loud"


def run_mpps_service(code: str) -> None:
    # abridged: the tables it names are the built-in plugin's
    from dimsekit_plugins.mpps import CREATE_REQUIREMENTS, MAINTAINED

    namespace = {"MAINTAINED": MAINTAINED, "CREATE_REQUIREMENTS": CREATE_REQUIREMENTS}
    exec(compile(code, "plugin-guide: mpps", "exec"), namespace)
    declared = {sop for service in namespace["dimsekit_service_classes"]() for sop in service.sop_classes}
    assert declared == {namespace["MPPS"], namespace["MPPS_RETRIEVE"]}


def run_mpps_completed(code: str) -> None:
    from pydicom.dataset import Dataset

    marked = []
    namespace = {"mark_worklist_item": lambda *args: marked.append(args)}
    exec(compile(code, "plugin-guide: on_mpps_completed", "exec"), namespace)
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS1"
    step = Dataset()
    step.PerformedProcedureStepStatus = "COMPLETED"
    step.ScheduledStepAttributesSequence = [item]
    namespace["dimsekit_on_mpps_completed"](instance=types.SimpleNamespace(dataset=step))
    assert marked == [("SPS1", "COMPLETED")]


def run_plugin_test(code: str) -> None:
    from pydicom.dataset import Dataset

    from dimsekit.cli.mpps import create_defaults

    step = Dataset()  # the N-CREATE Attribute List the example sends
    step.Modality = "CT"
    step.PatientName = "Doe^Jane"
    step.PatientID = "P1"
    create_defaults(step, "MODALITY1")
    exec(compile(code, "plugin-guide: testing", "exec"), {"step": step})


def run_configuration(code: str) -> None:
    import tomllib

    from twisted.internet.testing import MemoryReactorClock

    from dimsekit.ae import ApplicationEntity
    from dimsekit.config import from_mapping

    data = tomllib.loads(code)
    with tempfile.TemporaryDirectory() as base:
        if "tls" in data:
            # the files the example names, made for it: the AE reads them all
            from tests.tlscerts import make_tls_files

            files = make_tls_files(Path(base))
            shutil.copy(files.server_cert, Path(base) / data["tls"]["certificate"])
            shutil.copy(files.server_key, Path(base) / data["tls"]["private_key"])
        ae = ApplicationEntity(config=from_mapping(data, base=base), reactor=MemoryReactorClock())
        assert (ae.tls is not None) == ("tls" in data)


def run_metrics_configuration(code: str) -> None:
    import tomllib

    from twisted.internet.testing import MemoryReactorClock

    from dimsekit.ae import ApplicationEntity
    from dimsekit.config import from_mapping
    from dimsekit_plugins import metrics

    reactor = MemoryReactorClock()
    ae = ApplicationEntity(config=from_mapping(tomllib.loads(code)), reactor=reactor)
    metrics.dimsekit_on_node_started(ae)
    try:
        ((port, site, _backlog, interface),) = reactor.tcpServers
        assert (port, interface) == (9464, "127.0.0.1")
        assert site.resource.getStaticEntity(b"metrics") is not None
    finally:
        metrics.stop()


def run_tracing_configuration(code: str) -> None:
    import tomllib

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from twisted.internet.testing import MemoryReactorClock

    from dimsekit.ae import ApplicationEntity
    from dimsekit.config import from_mapping
    from dimsekit_plugins import tracing

    reactor = MemoryReactorClock()
    ae = ApplicationEntity(config=from_mapping(tomllib.loads(code)), reactor=reactor)
    tracing.dimsekit_on_node_started(ae)
    try:
        provider = tracing._provider
        assert provider.resource.attributes["service.name"] == "archive-1"
        (processor,) = provider._active_span_processor._span_processors
        exporter = processor._batch_processor._exporter
        assert isinstance(exporter, OTLPSpanExporter)
        assert exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
        assert reactor.triggers["during"]["shutdown"]  # what is left is sent as the node stops
    finally:
        tracing.stop()


RUNNERS = {
    "README.md#python1": run_readme_client,
    "README.md#python2": run_readme_service,
    "README.md#toml1": run_configuration,
    "README.md#toml2": run_metrics_configuration,
    "README.md#toml3": run_tracing_configuration,
    "docs/plugin-guide.md#python1": run_ping_plugin,
    "docs/plugin-guide.md#python2": run_observer_plugin,
    "docs/plugin-guide.md#python3": run_status_register,
    "docs/plugin-guide.md#python4": run_mpps_service,
    "docs/plugin-guide.md#python5": run_mpps_completed,
    "docs/plugin-guide.md#python6": run_plugin_test,
    "docs/plugin-guide.md#toml1": run_configuration,
}


def test_every_example_has_a_runner():
    assert sorted(EXAMPLES) == sorted(RUNNERS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name):
    RUNNERS[name](EXAMPLES[name])
