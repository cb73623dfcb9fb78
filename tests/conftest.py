"""Shared pytest fixtures for rnnjax's tests.

Fixtures here are generic switches (optional dependencies, numeric precision), never
test logic or reference implementations, and they must restore whatever global state
they change so that tests stay independent of their order.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import pytest
from _helpers import TEST_XLA_FLAGS

TORCH_REASON = (
    "torch not installed: pip install torch==2.13.0 (CPU wheel) to run the parity tests"
)


_CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
    """One persistent XLA compilation cache for the whole run, shared by the xdist workers
    and by every ``rnnjax`` subprocess the tests start (they inherit the environment).

    Most of a small test's time is compiling programs that other tests (and other
    processes) compile too: a smoke ``rnnjax train`` takes ~10 s cold and ~3 s warm.
    Results do not change (the cache key is the program, the flags and the devices). The
    directory is made by the controlling process and removed when the run ends; a cache
    the user set (``JAX_COMPILATION_CACHE_DIR``) is used as it is and kept.
    """
    # Tests compile with _helpers.TEST_XLA_FLAGS, in process and in the `rnnjax` subprocesses they
    # start (tests/_helpers.env keeps these flags and drops any other inherited XLA_FLAGS).
    # RNNJAX_TEST_XLA_OPT=default runs the suite at XLA's defaults instead.
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("RNNJAX_TEST_XLA_OPT") != "default":
        add = [f for name, f in TEST_XLA_FLAGS.items() if name not in flags]
        os.environ["XLA_FLAGS"] = " ".join([flags, *add]).strip()
    if not hasattr(config, "workerinput") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        config._rnnjax_jax_cache = tempfile.mkdtemp(prefix="rnnjax-test-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._rnnjax_jax_cache
        for k, v in _CACHE_ENV.items():
            os.environ.setdefault(k, v)
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # jax may be imported already
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1)))
        jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                          int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0)))


GPU_REASON = (
    "needs a GPU (JAX's default backend here is {backend!r}); on a GPU machine run "
    "`pytest -m gpu` (scripts/gpu_check.sh runs them with the GPU benchmark)"
)


def pytest_collection_modifyitems(config, items):
    """Skips ``gpu``-marked tests, with the reason, unless JAX's default backend is a GPU."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason=GPU_REASON.format(backend=jax.default_backend()))
    for item in gpu_items:
        item.add_marker(skip)


def pytest_unconfigure(config):
    cache = getattr(config, "_rnnjax_jax_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture
def torch():
    """The ``torch`` module, single-threaded and seeded; skips the test without torch.

    Why one thread: torch's CPU kernels with more threads than free cores are slow and
    their reductions may be ordered differently from run to run on a shared machine.
    """
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield torch
    torch.set_num_threads(threads)


@pytest.fixture
def x64():
    """Enables 64-bit JAX types for one test only (finite differences need float64)."""
    with jax.enable_x64(True):
        yield
