"""dimsekit.plugin.broadcast: a broadcast hook called as pluggy would call it."""

from __future__ import annotations

import pytest

from dimsekit.hookspecs import hookimpl
from dimsekit.plugin import broadcast, make_plugin_manager


class Named:
    """Records its calls in a shared list under its name."""

    def __init__(self, name, log, *, fail=False):
        self.name = name
        self.log = log
        self.fail = fail

    @hookimpl
    def dimsekit_on_association_aborted(self, reason, association):  # any order of the spec's names
        self.log.append((self.name, association, reason))
        if self.fail:
            raise RuntimeError(self.name)
        return self.name  # a result: not collected, no difference


class First(Named):
    @hookimpl(tryfirst=True)
    def dimsekit_on_association_aborted(self, reason, association):
        return super().dimsekit_on_association_aborted(reason, association)


class Last(Named):
    @hookimpl(trylast=True)
    def dimsekit_on_association_aborted(self, reason, association):
        return super().dimsekit_on_association_aborted(reason, association)


class OnlyAssociation:
    def __init__(self, log):
        self.log = log

    @hookimpl
    def dimsekit_on_association_aborted(self, association):  # a subset of the spec's arguments
        self.log.append(("subset", association))


class Wrapper:
    def __init__(self, log):
        self.log = log

    @hookimpl(wrapper=True)
    def dimsekit_on_association_aborted(self, association, reason):
        self.log.append("wrapper before")
        result = yield
        self.log.append(("wrapper after", result))
        return result


def pm_with(*plugins):
    return make_plugin_manager(load_entrypoints=False, plugins=plugins)


def both_ways(make_plugins):
    """What broadcast() and the hook's own call do with the same plugins."""
    logs = []
    for call in ("broadcast", "hook"):
        log: list = []
        pm = pm_with(*make_plugins(log))
        hook = pm.hook.dimsekit_on_association_aborted
        if call == "broadcast":
            assert broadcast(pm, hook, association="A", reason="why") is None
        else:
            hook(association="A", reason="why")
        logs.append(log)
    return logs


def test_same_calls_in_the_same_order_as_pluggy():
    def plugins(log):
        return [Last("last", log), Named("one", log), First("first", log), Named("two", log), OnlyAssociation(log)]

    via_broadcast, via_hook = both_ways(plugins)
    assert via_broadcast == via_hook
    assert [entry[0] for entry in via_broadcast] == ["first", "subset", "two", "one", "last"]


def test_no_implementation_calls_nothing():
    pm = pm_with()
    broadcast(pm, pm.hook.dimsekit_on_association_aborted, association="A", reason="why")


def test_an_exception_stops_the_call_as_in_pluggy():
    def plugins(log):
        return [Named("after", log), Named("raises", log, fail=True), Named("before", log)]

    logs = []
    for call in ("broadcast", "hook"):
        log: list = []
        pm = pm_with(*plugins(log))
        hook = pm.hook.dimsekit_on_association_aborted
        with pytest.raises(RuntimeError, match="raises"):
            if call == "broadcast":
                broadcast(pm, hook, association="A", reason="why")
            else:
                hook(association="A", reason="why")
        logs.append([entry[0] for entry in log])
    assert logs == [["before", "raises"]] * 2


def test_a_wrapper_gets_pluggys_own_call():
    via_broadcast, via_hook = both_ways(lambda log: [Named("one", log), Wrapper(log)])
    assert via_broadcast == via_hook == ["wrapper before", ("one", "A", "why"), ("wrapper after", ["one"])]


def test_monitored_calls_go_through_pluggy():
    monitored = []
    log: list = []
    pm = pm_with(Named("one", log))
    pm.add_hookcall_monitoring(lambda name, impls, kwargs: monitored.append(name), lambda *args: None)
    broadcast(pm, pm.hook.dimsekit_on_association_aborted, association="A", reason="why")
    assert monitored == ["dimsekit_on_association_aborted"]
    assert log == [("one", "A", "why")]


def test_traced_calls_go_through_pluggy(monkeypatch):
    from twisted.logger import globalLogPublisher

    monkeypatch.setenv("DIMSEKIT_TRACE_HOOKS", "1")
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        pm = pm_with()  # traced even without an implementation, as pluggy traces it
        broadcast(pm, pm.hook.dimsekit_on_association_aborted, association="A", reason="why")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("dimsekit_on_association_aborted" in str(e.get("text")) for e in events)


def test_a_plugin_registered_by_an_implementation_is_not_called_this_time():
    log: list = []

    class Registers:
        @hookimpl
        def dimsekit_on_association_aborted(self, association, reason):
            log.append("registers")
            pm.register(Named("late", log))

    pm = pm_with(Registers())
    broadcast(pm, pm.hook.dimsekit_on_association_aborted, association="A", reason="why")
    assert log == ["registers"]
    broadcast(pm, pm.hook.dimsekit_on_association_aborted, association="A", reason="why")
    assert log == ["registers", ("late", "A", "why"), "registers"]


# -- notify(): one plugin's exception stops neither the others nor the caller --------------------


def test_notify_calls_every_implementation_despite_one_that_raises():
    from twisted.logger import globalLogPublisher

    from dimsekit.plugin import notify

    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        log: list = []
        raises = Named("raises", log, fail=True)
        pm = pm_with(Named("after", log), raises, Named("before", log))
        notify(pm, pm.hook.dimsekit_on_association_aborted, association="A", reason="why")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [entry[0] for entry in log] == ["before", "raises", "after"]
    (failure,) = [e for e in events if e.get("log_failure") is not None]
    assert str(failure["log_failure"].value) == "raises"
    assert failure["hook"] == "dimsekit_on_association_aborted"
    assert failure["plugin"] == pm.get_name(raises)


def test_notify_through_pluggy_logs_instead_of_raising():
    from twisted.logger import globalLogPublisher

    from dimsekit.plugin import notify

    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        log: list = []
        pm = pm_with(Named("raises", log, fail=True), Wrapper(log))
        notify(pm, pm.hook.dimsekit_on_association_aborted, association="A", reason="why")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert log[:2] == ["wrapper before", ("raises", "A", "why")]
    assert [str(e["log_failure"].value) for e in events if e.get("log_failure") is not None] == ["raises"]
