"""What pydicom says of a request's data set reaches the log saying which request and
which peer (``dimsekit.libraries_log``): in the handler, after its awaits, while its
results stream out -- not as a bare warning naming a file of pydicom's."""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from twisted.internet import reactor, task

from dimsekit.scu import STUDY_ROOT_FIND
from tests.dimse_e2e.support import LoopbackTestCase, Services, within
from tests.pydicomlog import pydicom_log_lines


class Complaining(Services):
    """A C-FIND handler (a coroutine) whose data sets pydicom complains of."""

    async def find(self, request: Any) -> Any:  # type: ignore[override]
        self.record(request)
        request.dataset()  # the identifier, with an invalid Study Instance UID
        await task.deferLater(reactor, 0, lambda: None)
        UID("1.2.after.await")  # the handler again, after the reactor did other things
        return self._matches()

    def _matches(self) -> Any:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = "1.2.in.stream"  # built as the results stream out
        yield 0xFF00, ds


class PydicomLogTests(LoopbackTestCase):
    def setUp(self) -> None:
        super().setUp()
        watching = pydicom_log_lines()
        self.said = watching.__enter__()
        self.addCleanup(watching.__exit__, None, None, None)

    async def test_the_request_and_the_peer_are_named_wherever_pydicom_complains(self):
        _, port = await self.serve(Complaining())
        assoc = await self.connect(port, [STUDY_ROOT_FIND])
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = "1.2.in.query"
        operation = assoc.find(query)
        matches = [r async for r in operation]
        final = await within(operation.result)
        await within(assoc.release())
        self.assertEqual((len(matches), final.status), (1, 0x0000))
        lines = self.said()
        for value, doing in (("1.2.in.query", "reading"), ("1.2.after.await", "reading"),
                             ("1.2.in.stream", "answering")):
            expected = rf"pydicom, {doing} C-FIND message \d+ from SCU: Invalid value for VR UI: '{re.escape(value)}'\."
            self.assertTrue(any(re.fullmatch(expected, line) for line in lines), (value, lines))
        # the SCU's own complaints (building its query, here outside any request): pydicom's words alone
        self.assertIn("pydicom: Invalid value for VR UI: '1.2.in.query'.", lines)
