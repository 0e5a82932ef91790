"""twistd plugin: ``twistd -n dimsekit`` runs a dimsekit DICOM node (see dimsekit.tap)."""

from twisted.application.service import ServiceMaker

dimsekit = ServiceMaker(
    "dimsekit",
    "dimsekit.tap",
    "A DICOM node: verification, storage, query/retrieve, worklist, MPPS, commitment.",
    "dimsekit",
)
