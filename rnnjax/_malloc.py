"""glibc malloc tuning for XLA:CPU runs (docs/performance.md §3).

XLA:CPU allocates its large temporary buffers afresh on every call; with glibc's
defaults those above the mmap threshold are mapped and unmapped each time, and
every page is faulted in again, which cost JAX 0.45-0.77x of its speed at the
M and L benchmark shapes (torch's L training suffers too). Keeping freed memory
inside the heap fixes it.

What it must never do: run by itself. rnnjax does not call :func:`tune_malloc`
at import time: it changes process-wide allocator behaviour (memory is no longer
returned to the OS, which matters to a process that shares a machine), so the
entry point that wants it (a benchmark, a training script) calls it explicitly,
as early as possible, before large buffers exist. The ``rnnjax`` command is such an
entry point: :func:`rnnjax.cli.main` calls it first, before jax is imported, unless
``RNNJAX_MALLOC=default`` (``rnnjax train`` on the char-LM job: 1.66x the tokens/s,
docs/performance.md §3).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1}


def tune_malloc() -> dict:
    """Sets ``M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31-1`` via ``mallopt``.

    Returns a dict describing what was applied (for benchmark records):
    ``{"applied": bool, "settings": {...}, "reason": str}``. On non-glibc systems
    (macOS, musl) nothing is changed and ``applied`` is False.
    """
    if not sys.platform.startswith("linux"):
        return {"applied": False, "settings": {}, "reason": f"not linux ({sys.platform})"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return {"applied": False, "settings": {}, "reason": f"no glibc mallopt: {e}"}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = True
    for name, value in SETTINGS.items():
        # mallopt returns 1 on success, 0 on error.
        ok &= mallopt(globals()[name], value) == 1
    return {"applied": bool(ok), "settings": dict(SETTINGS),
            "reason": "mallopt" if ok else "mallopt returned an error"}


def malloc_for(choice: str) -> dict:
    """A benchmark's ``--malloc tuned|default``: :func:`tune_malloc`, or the record of
    leaving glibc alone. Call it before jax (or torch) makes its first large buffers."""
    if choice == "tuned":
        return tune_malloc()
    return {"applied": False, "settings": {}, "reason": f"--malloc {choice}"}
