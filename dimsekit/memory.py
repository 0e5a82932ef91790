"""Tune the C allocator of a process that moves bulk data: :func:`tune_allocator`.

Why.  While a data set streams in, a connection reads up to 1 MiB at a time
(:mod:`dimsekit.protocol`), and CPython makes each read's ``bytes`` with
``malloc``.  glibc serves a request above its *mmap threshold* with a fresh
anonymous mapping: the kernel's copy into it faults in and zeroes every page,
the shrink to the length actually read is an ``mremap``, the ``free`` an
``munmap``.  glibc raises the threshold by itself when a mapped block is
freed -- but to the block's size *after* the shrink (a read of 1 MiB that
returns 200 KiB), so the next 1 MiB read is mapped afresh all the same.

Measured with the node under 8 DCMTK ``storescu`` senders (400 CT instances
of 525 KB): 28,000 page faults (~70 per instance, ~14 % of the reactor
thread's CPU) and ~400 each of mmap, mremap and munmap.  With the threshold
above the largest read and a trim threshold that lets the heap keep what it
has, ~1,500 page faults; one association of CT instances +7 to +12 %
instances/s with 10-13 % less node CPU (three A/Bs; ``benchmarks/README.md``).

What it costs: the heap keeps up to :data:`TRIM_THRESHOLD` of freed memory
instead of returning it at once.  Measured: the node receiving one 1 GiB
instance peaks at the same RSS as before (84 MiB); after three rounds of 8
concurrent senders it holds 93 MB against 89-91 MB before.

``twistd dimsekit`` and the ``dimsekit`` command call it at start.  A
library user embedding dimsekit may call it once, early; it changes the
whole process's allocator, which is the application's call to make.  It does
nothing when the C library is not glibc, or when the environment already
sets glibc's own knobs (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES``): an operator's choice wins.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]

#: blocks up to this size come from the heap (above :data:`dimsekit.protocol._BLOCK_MAX`
#: plus CPython's and glibc's headers); glibc accepts up to 32 MiB on 64-bit
MMAP_THRESHOLD = 4 << 20
#: free memory at the top of a heap (each glibc arena's) kept, not given back to
#: the system; 4, 16 and 64 MiB all stopped the faults under 8 concurrent senders
TRIM_THRESHOLD = 16 << 20

# mallopt() parameters, <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_OPERATOR_KNOBS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_done: str | None = None


def tune_allocator(environ: Mapping[str, str] | None = None) -> str:
    """Keep bulk read buffers in the heap (glibc only); say what was done.

    Returns ``"tuned"``, or why not: ``"not glibc"``, ``"set by the
    environment"``, ``"refused"`` (``mallopt`` said no).  Calling it again
    returns the first answer and changes nothing.
    """
    global _done
    if _done is not None:
        return _done
    env = os.environ if environ is None else environ
    if any(name in env for name in _OPERATOR_KNOBS):
        _done = "set by the environment"
        return _done
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc, not musl or another libc
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _done = "not glibc"
        return _done
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either disables glibc's own
    # adjustment of both, so both get our values.
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    _done = "tuned" if ok else "refused"
    return _done
