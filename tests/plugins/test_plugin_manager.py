"""The plugin core: the plugin manager factory, entry points, blocking, the registry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pluggy
import pytest

from dimsekit.hookspecs import PROJECT_NAME, hookimpl
from dimsekit.plugin import blocked_from_environment, make_plugin_manager
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES, Registry, RegistryError, ServiceClass
from dimsekit.ul.negotiation import ContextSupport

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def echo(request):
    return 0x0000


def store(request):
    return 0x0000


class Declares:
    """A plugin object declaring the given service classes."""

    def __init__(self, *services: ServiceClass) -> None:
        self.services = list(services)

    @hookimpl
    def dimsekit_service_classes(self):
        return self.services


@pytest.fixture(autouse=True)
def _no_blocking_from_the_environment(monkeypatch):
    monkeypatch.delenv("DIMSEKIT_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("DIMSEKIT_TRACE_HOOKS", raising=False)


# -- the factory and entry points ----------------------------------------------------------


def test_builtin_verification_is_an_entry_point():
    (ep,) = [ep for ep in entry_points(group=PROJECT_NAME) if ep.name == "verification"]
    assert ep.value == "dimsekit_plugins.verification"


def test_builtin_verification_is_found_through_the_entry_point():
    pm = make_plugin_manager()
    plugin = pm.get_plugin("verification")
    assert plugin is not None
    assert plugin.__name__ == "dimsekit_plugins.verification"
    assert ("verification", plugin) in pm.list_name_plugin()
    dist = dict(pm.list_plugin_distinfo())
    assert plugin in dist  # registered by the entry-point loader, not by hand
    registry = Registry.from_plugins(pm)
    assert registry.handler("C-ECHO", VERIFICATION) is not None
    assert VERIFICATION in registry.supported


def test_without_entry_points_there_are_no_plugins():
    pm = make_plugin_manager(load_entrypoints=False)
    assert pm.get_plugins() == set()
    assert Registry.from_plugins(pm).supported == {}


def test_each_call_makes_a_new_manager():
    first, second = make_plugin_manager(load_entrypoints=False), make_plugin_manager(load_entrypoints=False)
    assert first is not second
    first.register(Declares())
    assert second.get_plugins() == set()


def test_extra_plugins_are_registered_and_hooks_checked():
    plugin = Declares(ServiceClass(name="echo", sop_classes=(VERIFICATION,), handlers={"C-ECHO": echo}))
    pm = make_plugin_manager(load_entrypoints=False, plugins=[plugin])
    assert pm.is_registered(plugin)
    assert Registry.from_plugins(pm).handler("C-ECHO", VERIFICATION) is echo


def test_a_plugin_given_that_an_entry_point_also_loads_is_registered_once():
    import dimsekit_plugins.verification as verification

    pm = make_plugin_manager(plugins=[verification])
    assert pm.get_plugin("verification") is verification  # under its entry-point name
    assert [plugin for plugin in pm.get_plugins() if plugin is verification] == [verification]
    assert Registry.from_plugins(pm).handler("C-ECHO", VERIFICATION) is not None  # no conflict with itself
    assert make_plugin_manager(load_entrypoints=False, plugins=[verification, verification]).is_registered(verification)


def test_a_misspelt_hook_is_refused():
    class Typo:
        @hookimpl
        def dimsekit_service_clases(self):  # sic
            return []

    with pytest.raises(pluggy.PluginValidationError):
        make_plugin_manager(load_entrypoints=False, plugins=[Typo()])


def test_core_does_not_import_builtin_plugins():
    """Importing and using the core never imports ``dimsekit_plugins``; only
    the entry-point loader does (checked in a fresh interpreter)."""
    script = textwrap.dedent(
        """
        import sys
        import dimsekit, dimsekit.ae, dimsekit.association, dimsekit.protocol, dimsekit.plugin
        import dimsekit.registry, dimsekit.hookspecs, dimsekit.config, dimsekit.service
        import dimsekit.tap, dimsekit.testing, dimsekit.cli
        from twisted.internet.testing import MemoryReactorClock
        from dimsekit.plugin import make_plugin_manager
        dimsekit.ApplicationEntity(
            "X", plugin_manager=make_plugin_manager(load_entrypoints=False), reactor=MemoryReactorClock()
        )
        before = sorted(m for m in sys.modules if m.split(".")[0] == "dimsekit_plugins")
        make_plugin_manager()
        after = sorted(m for m in sys.modules if m.split(".")[0] == "dimsekit_plugins")
        print(before, after)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    before, _, after = result.stdout.strip().partition("] [")
    assert before == "[", f"the core imported built-in plugins: {result.stdout}"
    assert "dimsekit_plugins.verification" in after


def install_plugin_distribution(monkeypatch, tmp_path, name, module, source):
    """A distribution ``name`` whose ``dimsekit`` entry point ``name`` is the
    module ``module`` (with ``source``), found first on sys.path (so before
    dimsekit itself: the entry-point loader registers it first)."""
    site = tmp_path / "site"
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[dimsekit]\n{name} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module, raising=False)  # removed again after the test
    assert [ep.name for ep in entry_points(group=PROJECT_NAME)][0] == name


def test_a_third_party_archive_replaces_the_builtin_one_found_in_any_order(monkeypatch, tmp_path):
    # dimsekit_archive stops at the first non-None result, and pluggy calls
    # the plugins registered last first: the built-in archive must come last
    # however the distributions happen to be listed on sys.path.
    install_plugin_distribution(monkeypatch, tmp_path, "acmearchive", "acme_archive_plugin", """
        from dimsekit.hookspecs import hookimpl

        ARCHIVE = object()

        @hookimpl
        def dimsekit_archive(config):
            return ARCHIVE
        """)
    import dimsekit_plugins.archive
    from dimsekit.config import Config

    opened = []
    monkeypatch.setattr(dimsekit_plugins.archive, "open_archive", lambda config: opened.append(config) or "built-in")
    pm = make_plugin_manager()
    assert pm.get_plugin("archive") is not None and pm.get_plugin("acmearchive") is not None
    assert pm.hook.dimsekit_archive(config=Config()) is sys.modules["acme_archive_plugin"].ARCHIVE
    assert opened == []  # the built-in archive was not even opened


# -- DIMSEKIT_DISABLE_PLUGINS ----------------------------------------------------------------


def test_disable_plugins_blocks_by_name(monkeypatch):
    monkeypatch.setenv("DIMSEKIT_DISABLE_PLUGINS", "verification")
    pm = make_plugin_manager()
    assert pm.is_blocked("verification")
    assert pm.get_plugin("verification") is None
    assert VERIFICATION not in Registry.from_plugins(pm).supported


def test_blocked_argument(monkeypatch):
    pm = make_plugin_manager(blocked=["verification"])
    assert pm.get_plugin("verification") is None


def test_blocked_name_also_refuses_an_object_registered_under_it(monkeypatch):
    monkeypatch.setenv("DIMSEKIT_DISABLE_PLUGINS", "mine")
    pm = make_plugin_manager(load_entrypoints=False)
    assert pm.register(Declares(), name="mine") is None
    assert pm.get_plugins() == set()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", set()),
        ("a", {"a"}),
        ("a,b", {"a", "b"}),
        (" a , ,b ,", {"a", "b"}),
    ],
)
def test_blocked_from_environment(value, expected):
    assert blocked_from_environment({"DIMSEKIT_DISABLE_PLUGINS": value}) == expected


def test_blocked_from_environment_unset():
    assert blocked_from_environment({}) == set()


def test_trace_switch(monkeypatch):
    monkeypatch.setenv("DIMSEKIT_TRACE_HOOKS", "1")
    pm = make_plugin_manager(load_entrypoints=False, plugins=[Declares()])
    assert pm.hook.dimsekit_service_classes() == [[]]  # traced, same result


# -- the registry -----------------------------------------------------------------------


def test_two_plugins_claiming_one_sop_class_name_both():
    first = Declares(ServiceClass(name="storage", sop_classes=(MR_IMAGE_STORAGE, CT_IMAGE_STORAGE)))
    second = Declares(ServiceClass(name="fast-ct", sop_classes=(CT_IMAGE_STORAGE,)))
    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(first, name="archive")
    pm.register(second, name="ctaccel")
    with pytest.raises(RegistryError) as info:
        Registry.from_plugins(pm)
    message = str(info.value)
    for needle in ("'storage'", "'fast-ct'", "'archive'", "'ctaccel'", CT_IMAGE_STORAGE, "CT Image Storage"):
        assert needle in message
    assert "DIMSEKIT_DISABLE_PLUGINS" in message


def test_conflict_stops_the_application_entity():
    from twisted.internet.testing import MemoryReactorClock

    from dimsekit.ae import ApplicationEntity

    pm = make_plugin_manager(
        load_entrypoints=False,
        plugins=[
            Declares(ServiceClass(name="one", sop_classes=(VERIFICATION,))),
            Declares(ServiceClass(name="two", sop_classes=(VERIFICATION,))),
        ],
    )
    with pytest.raises(RegistryError, match="'one'.*'two'|'two'.*'one'"):
        ApplicationEntity("NODE", plugin_manager=pm, reactor=MemoryReactorClock())


def test_conflict_without_plugin_names():
    with pytest.raises(RegistryError, match="'a' and 'b'"):
        Registry([ServiceClass(name="a", sop_classes=(VERIFICATION,)), ServiceClass(name="b", sop_classes=(VERIFICATION,))])


def test_dispatch_table():
    registry = Registry(
        [
            ServiceClass(name="verification", sop_classes=(VERIFICATION,), handlers={"C-ECHO": echo}),
            ServiceClass(
                name="storage",
                sop_classes=(CT_IMAGE_STORAGE, MR_IMAGE_STORAGE),
                handlers={"C-STORE": store},
                transfer_syntaxes=(EXPLICIT_VR_LE, JPEG_BASELINE),
            ),
        ]
    )
    assert registry.handlers == {
        ("C-ECHO", VERIFICATION): echo,
        ("C-STORE", CT_IMAGE_STORAGE): store,
        ("C-STORE", MR_IMAGE_STORAGE): store,
    }
    assert registry.handler("C-STORE", MR_IMAGE_STORAGE) is store
    assert registry.handler("C-ECHO", CT_IMAGE_STORAGE) is None
    assert registry.handler("C-FIND", "1.2.3") is None
    assert registry.supported[VERIFICATION] == ContextSupport(
        abstract_syntax=VERIFICATION, transfer_syntaxes=UNCOMPRESSED_TRANSFER_SYNTAXES
    )
    assert registry.supported[CT_IMAGE_STORAGE].transfer_syntaxes == (EXPLICIT_VR_LE, JPEG_BASELINE)
    assert registry.supported[CT_IMAGE_STORAGE].scp_role
    assert not registry.supported[CT_IMAGE_STORAGE].scu_role


def test_scu_declaration_does_not_take_the_scp_role_away():
    # A storage SCP, and a C-GET SCU plugin that may send C-STOREs for CT: the
    # order they are declared in must not matter.
    scp = ServiceClass(name="storage", sop_classes=(CT_IMAGE_STORAGE,), handlers={"C-STORE": store})
    scu = ServiceClass(
        name="getscu",
        sop_classes=(CT_IMAGE_STORAGE,),
        scp_role=False,
        scu_role=True,
        transfer_syntaxes=(JPEG_BASELINE,),
    )
    for order in ([scp, scu], [scu, scp]):
        registry = Registry(order)
        support = registry.supported[CT_IMAGE_STORAGE]
        assert support.scp_role and support.scu_role
        assert support.transfer_syntaxes == (*UNCOMPRESSED_TRANSFER_SYNTAXES, JPEG_BASELINE)
        assert registry.handler("C-STORE", CT_IMAGE_STORAGE) is store


def test_two_scu_declarations_do_not_conflict():
    registry = Registry(
        [
            ServiceClass(name="a", sop_classes=(CT_IMAGE_STORAGE,), scp_role=False, scu_role=True),
            ServiceClass(name="b", sop_classes=(CT_IMAGE_STORAGE,), scp_role=False, scu_role=True),
        ]
    )
    support = registry.supported[CT_IMAGE_STORAGE]
    assert support.scu_role and not support.scp_role


def test_plugins_returning_none_declare_nothing():
    class Nothing:
        @hookimpl
        def dimsekit_service_classes(self):
            return None

    pm = make_plugin_manager(load_entrypoints=False, plugins=[Nothing(), Declares()])
    assert Registry.from_plugins(pm).service_classes == []


def test_conformance_rows():
    registry = Registry(
        [
            ServiceClass(name="verification", sop_classes=(VERIFICATION,)),
            ServiceClass(name="storage", sop_classes=(CT_IMAGE_STORAGE, MR_IMAGE_STORAGE), scu_role=True),
            ServiceClass(name="getscu", sop_classes=("1.2.840.10008.5.1.4.1.2.2.3",), scp_role=False, scu_role=True),
        ]
    )
    assert registry.conformance_rows() == [
        ("verification", "Verification SOP Class", VERIFICATION, "SCP"),
        ("storage", "CT Image Storage", CT_IMAGE_STORAGE, "SCP/SCU"),
        ("storage", "MR Image Storage", MR_IMAGE_STORAGE, "SCP/SCU"),
        (
            "getscu",
            "Study Root Query/Retrieve Information Model - GET",
            "1.2.840.10008.5.1.4.1.2.2.3",
            "SCU",
        ),
    ]


def test_conformance_rows_from_the_builtin_plugins():
    rows = Registry.from_plugins(make_plugin_manager()).conformance_rows()
    assert ("verification", "Verification SOP Class", VERIFICATION, "SCP") in rows
