"""``RNNJAX_MALLOC`` is honoured by ``rnnjax.cli.main`` (docs/performance.md §3).

The check is behavioural, not a log line: after ``rnnjax config`` (``main()`` reading
``sys.argv``, as the console script calls it) the same process asks glibc for 64 MiB
and reads ``mallinfo2().hblks``, the count of chunks served by ``mmap``. glibc's
default serves a request that large by ``mmap`` (one more chunk); the tuned allocator
(``M_MMAP_MAX=0``) serves it from the heap (none).
Unset, the command tunes (measured: docs/performance.md §3); a program calling
``main(argv)`` in its own process keeps its allocator unless it sets the variable.
"""

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import ctypes, json, sys
from rnnjax import cli

args = ["config", "--config", "configs/adding.py"]
if sys.argv[1] == "command":  # as the console script: main() reads sys.argv
    sys.argv = ["rnnjax", *args]
    rc = cli.main()
else:  # a program that embeds rnnjax
    rc = cli.main(args)
libc = ctypes.CDLL("libc.so.6")
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblks
p = libc.malloc(64 << 20)
after = libc.mallinfo2().hblks
libc.free(p)
sys.stderr.write("PROBE " + json.dumps({"rc": rc, "mmapped": after - before,
                                        "record": cli.MALLOC}) + "\n")
"""


def _has_mallinfo2() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


pytestmark = [pytest.mark.subprocess,
              pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")]


def probe(value: str | None, how: str = "command") -> tuple[int, dict | None, str]:
    env = {k: v for k, v in os.environ.items() if k != "RNNJAX_MALLOC"}
    if value is not None:
        env["RNNJAX_MALLOC"] = value
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", PROBE, how], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE ")]
    return proc.returncode, (json.loads(lines[-1][6:]) if lines else None), proc.stderr


@pytest.mark.parametrize("value,how", [("tuned", "command"), (None, "command"),
                                       ("tuned", "in_process")])
def test_tuned_keeps_large_blocks_in_the_heap(value, how):
    # None: the variable unset; the rnnjax command tunes (docs/performance.md §3).
    rc, out, err = probe(value, how)
    assert rc == 0 and out is not None, err
    assert out["rc"] == 0
    assert out["record"]["applied"] is True
    assert out["mmapped"] == 0, f"RNNJAX_MALLOC={value}: a 64 MiB malloc was still mmapped"


@pytest.mark.parametrize("value,how", [("default", "command"), (None, "in_process")])
def test_default_leaves_glibc_alone(value, how):
    rc, out, err = probe(value, how)
    assert rc == 0 and out is not None, err
    assert out["record"]["applied"] is False
    assert out["mmapped"] == 1, "glibc's default should mmap a 64 MiB request"


def test_unknown_value_is_an_error_that_says_what_to_use():
    rc, out, err = probe("fast")
    assert rc != 0 and out is None
    assert "RNNJAX_MALLOC" in err and "tuned" in err and "default" in err
