"""Verification SOP Class (PS3.4 Annex A) as a plugin: answers C-ECHO with Success."""

from __future__ import annotations

from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.uids import VERIFICATION


def handle_echo(request: object) -> int:
    """C-ECHO: the SCP is there.  Always 0x0000 Success (PS3.4 A.4, PS3.7 9.1.5.1.4)."""
    return 0x0000


@hookimpl
def dimsekit_service_classes() -> list[ServiceClass]:
    """Declare the Verification service class, SCP role."""
    return [ServiceClass(name="verification", sop_classes=(VERIFICATION,), handlers={"C-ECHO": handle_echo})]
