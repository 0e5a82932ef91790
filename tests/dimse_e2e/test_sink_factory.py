"""A plugin's sink factory (ServiceClass.sink_factories) and its handler:
the handler gets the very Request the factory was given, its sink the
factory's, or -- factory refused -- its sink_error, the data set discarded."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from dimsekit.dimse.fragments import SpooledSink
from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.scu import STUDY_ROOT_GET
from tests.dimse_e2e.support import (
    CT,
    CT_FILE,
    MR,
    LoopbackTestCase,
    Services,
    file_dataset_bytes,
    within,
)


class Sinking:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.factory_requests: list[Any] = []
        self.sinks: list[Any] = []
        self.handled: list[Any] = []

    def open_sink(self, request: Any) -> Any:
        self.factory_requests.append(request)
        if self.refuse:
            raise ValueError("no room")
        sink = SpooledSink()
        self.sinks.append(sink)
        return sink

    def store(self, request: Any) -> int:
        self.handled.append(request)
        return 0xA700 if request.sink_error is not None else 0x0000

    @hookimpl
    def dimsekit_service_classes(self) -> list[ServiceClass]:
        return [
            ServiceClass(
                name="t-sink", sop_classes=(CT,), handlers={"C-STORE": self.store},
                sink_factories={"C-STORE": self.open_sink},
            )
        ]


class SinkFactoryTests(LoopbackTestCase):
    async def test_handler_gets_the_request_its_sink_factory_saw(self):
        plugin = Sinking()
        _, port = await self.serve(plugin)
        assoc = await self.connect(port, [CT])
        for _ in range(2):
            response = await within(assoc.store(CT_FILE))
            self.assertEqual(response.status, 0x0000)
        await within(assoc.release())
        self.assertEqual(len(plugin.handled), 2)
        for seen, handled, sink in zip(plugin.factory_requests, plugin.handled, plugin.sinks, strict=True):
            self.assertIs(handled, seen)
            self.assertIs(handled.sink, sink)
            self.assertIsNone(handled.sink_error)
            self.assertEqual(sink.getvalue(), file_dataset_bytes(CT_FILE))
        self.assertNotEqual(plugin.handled[0].message_id, plugin.handled[1].message_id)

    async def test_a_refusing_factory_s_error_reaches_the_handler(self):
        plugin = Sinking(refuse=True)
        _, port = await self.serve(plugin)
        assoc = await self.connect(port, [CT])
        response = await within(assoc.store(CT_FILE))
        self.assertEqual(response.status, 0xA700)
        (handled,) = plugin.handled
        self.assertIs(handled, plugin.factory_requests[0])
        self.assertIsInstance(handled.sink_error, ValueError)
        self.assertEqual(handled.sink.size, len(file_dataset_bytes(CT_FILE)))  # discarded, counted
        await within(assoc.release())

    async def test_a_c_get_s_own_store_handler_gets_the_data_set_not_a_plugin_s_sink(self):
        # The C-GET SCU's AE serves CT storage through a plugin whose sink
        # factory refuses; the instances of a C-GET given on_store go to that
        # handler (it is consulted before the plugins'), and so must their data sets.
        services = Services()
        _, port = await self.serve(services)
        plugin = Sinking(refuse=True)
        assoc = await self.connect(port, [STUDY_ROOT_GET, CT, MR], ae=self.make_ae("SCU", plugin),
                                   roles={CT: (True, True), MR: (True, True)})
        received = []

        def on_store(request):
            received.append((request.sink_error, request.sink.open().read()))
            return 0x0000

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        final = await within(assoc.get(query, on_store=on_store).result)
        self.assertEqual(final.status, 0x0000)
        self.assertEqual(plugin.factory_requests, [])
        self.assertEqual(received[0], (None, file_dataset_bytes(CT_FILE)))
        await within(assoc.release())
