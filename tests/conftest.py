"""Shared pytest fixtures for rnnjax's tests.

Fixtures here are generic switches (optional dependencies, numeric precision), never
test logic or reference implementations, and they must restore whatever global state
they change so that tests stay independent of their order.
"""

from __future__ import annotations

import jax
import pytest

TORCH_REASON = (
    "torch not installed: pip install torch==2.13.0 (CPU wheel) to run the parity tests"
)


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
