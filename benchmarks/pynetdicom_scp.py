"""A pynetdicom 3 Verification SCP (and, with --store, a Storage SCP) for the benchmarks.

    python benchmarks/pynetdicom_scp.py PORT [--store] [--no-nodelay]

TCP_NODELAY: pynetdicom never sets it, so every reply would wait on Nagle
and the peer's delayed ACK (~40 ms) and the benchmark would measure that,
not pynetdicom.  We patch it on the way pynetdicom accepts connections:
``AssociationServer.get_request`` (the ``socketserver`` hook that returns the
accepted socket; ``ThreadedAssociationServer``, which ``start_server`` uses,
inherits it) is wrapped to set ``TCP_NODELAY`` on each accepted socket
before pynetdicom wraps it in its ``AssociationSocket``.  ``--no-nodelay``
leaves pynetdicom as shipped.

With --store the C-STORE handler checks the data set's size and returns
0x0000 without decoding or writing it (like DCMTK ``storescp --ignore``);
pynetdicom keeps the received data set in memory (its default), or in a
temporary file with --chunked (``_config.STORE_RECV_CHUNKED_DATASET``).
"""

from __future__ import annotations

import argparse
import logging
import socket

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import MultiFrameGrayscaleByteSecondaryCaptureImageStorage, Verification
from pynetdicom.transport import AssociationServer

_original_get_request = AssociationServer.get_request


def _get_request_nodelay(self):  # type: ignore[no-untyped-def]
    client, address = _original_get_request(self)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, address


def nodelay_everywhere() -> None:
    """``TCP_NODELAY`` on every socket pynetdicom makes: those it accepts (above) and those it
    connects with (a C-MOVE SCP's sub-association to the move destination)."""
    from pynetdicom.transport import AssociationSocket

    AssociationServer.get_request = _get_request_nodelay  # type: ignore[method-assign]
    original = AssociationSocket._create_socket

    def create_socket(self, address):  # type: ignore[no-untyped-def]
        sock = original(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    AssociationSocket._create_socket = create_socket  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--store", action="store_true", help="also accept the benchmark's storage SOP class")
    parser.add_argument("--chunked", action="store_true", help="receive C-STORE data sets to a temp file")
    parser.add_argument("--no-nodelay", action="store_true", help="leave Nagle on, as pynetdicom ships")
    args = parser.parse_args()
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    if not args.no_nodelay:
        AssociationServer.get_request = _get_request_nodelay  # type: ignore[method-assign]
    if args.chunked:
        _config.STORE_RECV_CHUNKED_DATASET = True

    ae = AE(ae_title="PYNETDICOM")
    ae.add_supported_context(Verification)
    handlers = []
    if args.store:
        ae.add_supported_context(
            MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
            ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
        )

        def handle_store(event):  # type: ignore[no-untyped-def]
            if args.chunked:
                size = event.dataset_path.stat().st_size
            else:
                size = len(event.request.DataSet.getbuffer())
            return 0x0000 if size else 0xC000

        handlers.append((evt.EVT_C_STORE, handle_store))
    ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)


if __name__ == "__main__":
    main()
