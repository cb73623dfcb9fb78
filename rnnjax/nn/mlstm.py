"""The mLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): a matrix memory
with an exponential input gate and a covariance update rule, in three equivalent forms.

Per head (``N`` heads, key width ``DK``, value width ``DV``), with pre-activations
``i_t``, ``f_t`` (scalars per head) and ``q_t, k_t`` ``(DK,)``, ``v_t`` ``(DV,)``::

    C_t = f_t C_{t-1} + i_t k_t v_tᵀ          (DK, DV)   the matrix memory
    n_t = f_t n_{t-1} + i_t k_t               (DK,)      the normaliser
    h_t = C_tᵀ q̂_t / max(|n_tᵀ q̂_t|, 1)      (DV,)      q̂ = q / sqrt(DK)

with ``f_t = sigmoid(f̃_t)`` and ``i_t = exp(ĩ_t)``. The exponential input gate overflows
unless the memory is kept in a rescaled ("stabilised") form: a max-state ``m_t``
(a log-scale per head) is carried and ``(C, n)`` are stored divided by ``exp(m_t)``::

    m_t = max(log f_t + m_{t-1}, ĩ_t)
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(ĩ_t - m_t) k_t v_tᵀ
    n_t = (same weights) n_{t-1}, k_t
    h_t = C_tᵀ q̂_t / (max(|n_tᵀ q̂_t|, exp(-m_t)) + eps)

The rescaling cancels between numerator and denominator, so ``h`` does not depend on the
choice of ``m`` except through ``eps`` (``1e-6``, added in the stabilised space as the
``mlstm_kernels`` package does). As in that package the initial state is ``C = 0``,
``n = 0``, ``m = 0``; its fully parallel kernel instead starts from ``m = -inf``
(no history), which :func:`mlstm_parallel` accepts as an initial state too.

The three forms, all on batch-major ``(B, T, N, D)`` arrays with gates ``(B, T, N)``:

* :func:`mlstm_step` / :func:`mlstm_recurrent`: the recurrence above, one step at a time
  (decoding; ``O(T)`` sequential steps, ``O(DK DV)`` state);
* :func:`mlstm_chunkwise`: chunks of ``C`` steps; a ``lax.scan`` over chunks carries
  ``(C, n, m)`` and each chunk's outputs are a ``(C, C)`` masked quadratic form plus the
  incoming state's contribution. ``C = 1`` is the recurrence, ``C = T`` the parallel form;
  in between it trades ``T/C`` sequential steps for ``O(T C)`` work;
* :func:`mlstm_parallel`: one chunk of length ``T``.

Masking (ragged lengths): where ``mask`` is False the gates are set to ``ĩ = -inf``,
``log f = 0``, which leaves ``(C, n, m)`` exactly unchanged (``m_t = max(m_{t-1}, -inf)``,
``exp(0) = 1``, ``exp(-inf) = 0``), so one code path serves padding inside the last chunk
and ragged batches. Outputs at masked steps are zero.

The cell (:class:`MLSTMCell`) is the paper's mLSTM with an output gate,
``y_t = σ(õ_t) ⊙ h_t`` (heads concatenated, ``H = N·DH``, ``DK = DV = DH``), all of
``q, k, v, õ, ĩ, f̃`` from one hoisted input projection. The per-head norm, causal
convolution, up-projection and skip of the xLSTM *block* are not part of the cell (they
belong to a block). ``impl`` picks the time loop: ``"chunkwise"`` (``"auto"``, the
default), ``"parallel"``, or ``"recurrent"`` (``"scan"``: :func:`masked_scan` of the step).
No form uses a custom VJP, so forward-mode autodiff works through all of them.

Cells never import layers, data or training code.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.cell import RecurrentCell, register_cell
from rnnjax.nn.scan import masked_scan
from rnnjax.nn.types import Array

__all__ = [
    "MLSTMCell",
    "MLSTMMemory",
    "MLSTMState",
    "mlstm_chunkwise",
    "mlstm_parallel",
    "mlstm_recurrent",
    "mlstm_step",
    "zero_memory",
]

EPS = 1e-6


class MLSTMMemory(NamedTuple):
    """The stabilised mLSTM state: ``c`` ``(B, N, DK, DV)``, ``n`` ``(B, N, DK)``,
    ``m`` ``(B, N)``; the true memory is ``exp(m) c``, ``exp(m) n``."""

    c: Array
    n: Array
    m: Array


def zero_memory(batch: int, num_heads: int, dk: int, dv: int, dtype=jnp.float32) -> MLSTMMemory:
    """The ``mlstm_kernels`` initial state: ``C = 0``, ``n = 0``, ``m = 0``."""
    return MLSTMMemory(
        jnp.zeros((batch, num_heads, dk, dv), dtype),
        jnp.zeros((batch, num_heads, dk), dtype),
        jnp.zeros((batch, num_heads), dtype),
    )


def _masked_gates(i: Array, f: Array, mask: Array | None) -> tuple[Array, Array]:
    """``(ĩ, log f)`` ``(B, T, N)`` with masked steps turned into identity steps
    (``ĩ = -inf``, ``log f = 0``); ``mask`` is ``(B, T)`` bool or None."""
    logf = jax.nn.log_sigmoid(f)
    if mask is None:
        return i, logf
    m = mask[..., None]
    return jnp.where(m, i, -jnp.inf), jnp.where(m, logf, 0.0)


def mlstm_step(
    state: MLSTMMemory, q: Array, k: Array, v: Array, i: Array, f: Array, *, eps: float = EPS
) -> tuple[MLSTMMemory, Array]:
    """One recurrent step.

    Args:
      state: the carry (see :class:`MLSTMMemory`).
      q, k: ``(B, N, DK)``; v: ``(B, N, DV)``; i, f: ``(B, N)`` gate pre-activations.

    Returns:
      ``(state, h)`` with ``h`` ``(B, N, DV)``.
    """
    return _step_log(state, q, k, v, i, jax.nn.log_sigmoid(f), eps)


def _update(state, k, v, i, logf):
    """The memory write of one step: ``(c, n, m)`` after step t (see the module docstring)."""
    c, n, m = state
    m_new = jnp.maximum(logf + m, i)
    fa = jnp.exp(logf + m - m_new)  # (B, N), <= 1 by construction of m_new
    ia = jnp.exp(i - m_new)
    c = fa[..., None, None] * c + ia[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = fa[..., None] * n + ia[..., None] * k
    return MLSTMMemory(c, n, m_new)


def _readout(state, q, eps):
    """``h`` ``(B, N, DV)`` read from the memory after the step with query ``q``."""
    c, n, m = state
    qs = q * (q.shape[-1] ** -0.5)
    num = jnp.einsum("bnd,bnde->bne", qs, c)
    den = jnp.einsum("bnd,bnd->bn", qs, n)
    return num / (jnp.maximum(jnp.abs(den), jnp.exp(-m)) + eps)[..., None]


def _step_log(state, q, k, v, i, logf, eps):
    state = _update(state, k, v, i, logf)
    return state, _readout(state, q, eps)


def mlstm_recurrent(
    q: Array, k: Array, v: Array, i: Array, f: Array, state: MLSTMMemory | None = None,
    mask: Array | None = None, *, eps: float = EPS,
) -> tuple[Array, MLSTMMemory]:
    """The recurrence as a ``lax.scan`` of :func:`mlstm_step`.

    Args:
      q, k: ``(B, T, N, DK)``; v: ``(B, T, N, DV)``; i, f: ``(B, T, N)``.
      state: initial :class:`MLSTMMemory`; None means :func:`zero_memory`.
      mask: ``(B, T)`` bool, True where a step is valid; None means all valid.

    Returns:
      ``(h, final_state)`` with ``h`` ``(B, T, N, DV)``.
    """
    B, _, N, DK = q.shape
    if state is None:
        state = zero_memory(B, N, DK, v.shape[-1], q.dtype)
    i, logf = _masked_gates(i, f, mask)

    def body(s, xs):
        return _step_log(s, *xs, eps)

    # (B, T, ...) -> (T, B, ...): lax.scan runs over the leading axis.
    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (q, k, v, i, logf))
    state, h = jax.lax.scan(body, state, xs)
    h = jnp.moveaxis(h, 0, 1)
    if mask is not None:
        h = jnp.where(mask[..., None, None], h, 0.0)
    return h, state


def _chunk(state: MLSTMMemory, q, k, v, i, logf, eps) -> tuple[MLSTMMemory, Array]:
    """Outputs of one chunk of ``L`` steps and the state after it.

    ``q, k`` ``(B, L, N, DK)``, ``v`` ``(B, L, N, DV)``, ``i, logf`` ``(B, L, N)``;
    ``state`` is the state before the chunk. Returns ``(state_after, h (B, L, N, DV))``.
    """
    c, n, m = state
    L = q.shape[1]
    scale = q.shape[-1] ** -0.5
    b = jnp.cumsum(logf, axis=1)  # (B, L, N): log of prod f over steps 1..t of the chunk
    # log weight of step s's write in step t's memory (s <= t): sum_{s<r<=t} log f_r + ĩ_s.
    log_d = b[:, :, None, :] - b[:, None, :, :] + i[:, None, :, :]  # (B, L_t, L_s, N)
    causal = jnp.tril(jnp.ones((L, L), bool))[None, :, :, None]
    log_d = jnp.where(causal, log_d, -jnp.inf)
    m_inter = b + m[:, None, :]  # (B, L, N): the log weight of the incoming state at step t
    # m_t of the recurrence, i.e. max(m_inter, max_s log_d); each row has s = t, but that
    # entry is -inf on a masked step, hence the max with m_inter which is always finite.
    m_t = jnp.maximum(m_inter, jnp.max(log_d, axis=2))
    d = jnp.exp(log_d - m_t[:, :, None, :])
    w = jnp.einsum("btnd,bsnd->btsn", q, k) * scale * d  # (B, L_t, L_s, N)
    q_in = q * (scale * jnp.exp(m_inter - m_t))[..., None]  # q scaled for the incoming state
    num = jnp.einsum("btnd,bnde->btne", q_in, c) + jnp.einsum("btsn,bsne->btne", w, v)
    den = jnp.einsum("btnd,bnd->btn", q_in, n) + jnp.sum(w, axis=2)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_t)) + eps)[..., None]

    # The state after the chunk: the incoming state decays by exp(g), step s's write by
    # exp(g - b_s + ĩ_s); rescale everything to the new max-state.
    g = b[:, -1]  # (B, N)
    a = g[:, None, :] - b + i  # (B, L, N)
    m_new = jnp.maximum(g + m, jnp.max(a, axis=1))
    decay = jnp.exp(g + m - m_new)
    k_w = k * jnp.exp(a - m_new[:, None, :])[..., None]
    c = decay[..., None, None] * c + jnp.einsum("bsnd,bsne->bnde", k_w, v)
    n = decay[..., None] * n + jnp.sum(k_w, axis=1)
    return MLSTMMemory(c, n, m_new), h


def mlstm_chunkwise(
    q: Array, k: Array, v: Array, i: Array, f: Array, state: MLSTMMemory | None = None,
    mask: Array | None = None, *, chunk_size: int = 64, eps: float = EPS,
) -> tuple[Array, MLSTMMemory]:
    """The chunkwise-parallel form: ``lax.scan`` over chunks of ``chunk_size`` steps.

    Same arguments and result as :func:`mlstm_recurrent`. ``T`` need not be a multiple of
    ``chunk_size``: the tail is padded with masked (identity) steps, which leave the
    state unchanged, so the final state is that after step ``T``.
    """
    if chunk_size < 1:
        raise ValueError(f"mlstm_chunkwise: chunk_size must be >= 1, got {chunk_size}")
    B, T, N, DK = q.shape
    if state is None:
        state = zero_memory(B, N, DK, v.shape[-1], q.dtype)
    L = min(chunk_size, T)
    pad = (-T) % L
    if pad:
        valid = jnp.ones((B, T), bool) if mask is None else mask
        mask = jnp.pad(valid, ((0, 0), (0, pad)))
        q, k, v, i, f = (jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
                         for a in (q, k, v, i, f))
    i_m, logf = _masked_gates(i, f, mask)
    nc = (T + pad) // L
    # (B, NC*L, ...) -> (NC, B, L, ...): the scan runs over the chunk axis.
    chunks = tuple(jnp.moveaxis(a.reshape((B, nc, L) + a.shape[2:]), 1, 0)
                   for a in (q, k, v, i_m, logf))
    if nc == 1:  # no loop needed: the parallel form
        state, h = _chunk(state, *(a[0] for a in chunks), eps)
        h = h[:, None]
    else:
        state, h = jax.lax.scan(lambda s, xs: _chunk(s, *xs, eps), state, chunks)
        h = jnp.moveaxis(h, 0, 1)
    h = h.reshape((B, nc * L) + h.shape[3:])[:, :T]
    if mask is not None:
        h = jnp.where(mask[:, :T, None, None], h, 0.0)
    return h, state


def mlstm_parallel(
    q: Array, k: Array, v: Array, i: Array, f: Array, state: MLSTMMemory | None = None,
    mask: Array | None = None, *, eps: float = EPS,
) -> tuple[Array, MLSTMMemory]:
    """The fully parallel (quadratic in ``T``) form: one chunk of length ``T``.

    Same arguments and result as :func:`mlstm_recurrent`. With
    ``state = MLSTMMemory(0, 0, -inf)`` it is the ``mlstm_kernels`` "stablef" parallel
    kernel, which has no initial state.
    """
    return mlstm_chunkwise(q, k, v, i, f, state, mask, chunk_size=q.shape[1], eps=eps)


# ---------------------------------------------------------------------------
# The cell.
# ---------------------------------------------------------------------------
class MLSTMState(NamedTuple):
    """The mLSTM cell's carry: ``h`` ``(B, H)`` the last output (what pooling and bridges
    read; the mLSTM has no recurrent connection through it), then the memory ``c``
    ``(B, N, DH, DH)``, ``n`` ``(B, N, DH)``, ``m`` ``(B, N)`` (:class:`MLSTMMemory`)."""

    h: Array
    c: Array
    n: Array
    m: Array


#: ``impl`` values -> the time loop; "auto"/"scan" are the protocol-wide names.
_IMPLS = {"auto": "chunkwise", "chunkwise": "chunkwise", "parallel": "parallel",
          "recurrent": "recurrent", "scan": "recurrent"}


#: The default initialiser of ``w_ih`` (the classic cells' default too).
_KERNEL_INIT = nnx.initializers.lecun_normal()


class MLSTMCell(RecurrentCell):
    """The mLSTM cell (see the module docstring).

    Args:
      in_features: E.
      hidden_features: H = ``num_heads * DH``, the width of ``y``.
      num_heads: N; must divide H.
      chunk_size: C, the chunk length of ``impl="chunkwise"``; any C gives the same numbers
        (T need not be a multiple of it). 64 is ``mlstm_kernels``' default.
      impl: ``"auto"`` (= ``"chunkwise"``) | ``"chunkwise"`` | ``"parallel"`` |
        ``"recurrent"`` | ``"scan"`` (= ``"recurrent"``): the form of :meth:`scan_projected`.
      kernel_init: the initialiser of the ``q, k, v, o`` columns of ``w_ih``.
      dtype, param_dtype: as for every cell. Under a bfloat16 policy the projection and
        ``q, k, v`` are bfloat16; the gates, the memory ``(c, n, m)`` and the carry's ``h``
        float32, so the matmuls that read the memory promote to float32; ``y`` is bfloat16.

    Projection layout: ``xp = x w_ih + b_ih`` is ``(..., 4H + 2N)``, blocks
    ``[q, k, v, õ, ĩ, f̃]`` (each of the first four ``(N, DH)`` head-major). As in xLSTM's
    mLSTM layer, the ``ĩ, f̃`` columns of ``w_ih`` start at zero and ``f̃``'s bias is
    ``linspace(3, 6)`` over heads, so at initialisation the heads keep memories of
    ``1/(1-σ(3)) ≈ 21`` to ``1/(1-σ(6)) ≈ 400`` steps whatever the input.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_heads: int = 4,
        chunk_size: int = 64,
        impl: str = "auto",
        kernel_init=_KERNEL_INIT,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        if num_heads < 1 or hidden_features % num_heads:
            raise ValueError(f"MLSTMCell: num_heads={num_heads} must be >= 1 and divide "
                             f"hidden_features={hidden_features}")
        if chunk_size < 1:
            raise ValueError(f"MLSTMCell: chunk_size must be >= 1, got {chunk_size}")
        if impl not in _IMPLS:
            raise ValueError(f"MLSTMCell: unknown impl {impl!r}; known: {sorted(_IMPLS)} "
                             f"(the mLSTM has no fused form; every impl is plain autodiff)")
        self.num_heads, self.chunk_size, self.impl = num_heads, chunk_size, _IMPLS[impl]
        H, N = hidden_features, num_heads
        w = kernel_init(rngs.params(), (in_features, 4 * H), param_dtype)
        self.w_ih = nnx.Param(jnp.concatenate([w, jnp.zeros((in_features, 2 * N), param_dtype)], 1))
        f_bias = jnp.linspace(3.0, 6.0, N) if N > 1 else jnp.full((1,), 3.0)
        self.b_ih = nnx.Param(jnp.concatenate(
            [jnp.zeros((4 * H + N,)), f_bias]).astype(param_dtype))

    @property
    def head_dim(self) -> int:
        return self.hidden_features // self.num_heads

    # -- the protocol --------------------------------------------------------
    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., 4H + 2N)``: ``x w_ih + b_ih``."""
        self.check_features(x)
        return self._cast(x) @ self._p("w_ih") + self._p("b_ih")

    def _split(self, xp: Array):
        """``xp`` ``(..., 4H + 2N)`` -> ``q, k, v, õ`` ``(..., N, DH)``, ``ĩ, f̃`` ``(..., N)``.

        The gate pre-activations ``ĩ, f̃`` come out in float32 at least: their cumulative
        sums (the chunk's ``log f`` prefix) and the stabiliser ``m`` are float32 whatever
        the compute dtype; ``q, k, v, õ`` stay in it.
        """
        H, N = self.hidden_features, self.num_heads
        qkvo = xp[..., :4 * H].reshape(xp.shape[:-1] + (4, N, self.head_dim))
        q, k, v, o = (qkvo[..., g, :, :] for g in range(4))
        ct = jnp.promote_types(xp.dtype, jnp.float32)
        return q, k, v, o, xp[..., 4 * H:4 * H + N].astype(ct), xp[..., 4 * H + N:].astype(ct)

    def _output(self, o: Array, h: Array) -> Array:
        """``y = σ(õ) ⊙ h``, heads concatenated: ``(..., N, DH) -> (..., H)``."""
        y = jax.nn.sigmoid(o) * h
        return y.reshape(y.shape[:-2] + (self.hidden_features,))

    def step_projected(self, carry: MLSTMState, xp_t: Array) -> tuple[MLSTMState, Array]:
        return self.perturbed_step(carry, xp_t, None)

    def initialize_carry(self, batch_shape, dtype=None) -> MLSTMState:
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        dtype = dtype or self.carry_dtype
        N, D = self.num_heads, self.head_dim

        def z(*s):
            return jnp.zeros((*batch_shape, *s), dtype)

        return MLSTMState(z(self.hidden_features), z(N, D, D), z(N, D), z(N))

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        """The time loop over ``xp`` ``(T, B, 4H + 2N)``, by ``impl``; same contract as
        :meth:`RecurrentCell.scan_projected` (masked steps keep the carry, ``ys`` zero there).

        ``reverse`` flips the time axis of ``xp`` and ``mask`` and runs forward: masked steps
        are identity steps here, so each row starts at its own last valid step, whatever
        the mask's pattern.
        """
        if resets is not None:
            # Packed segments run on the step loop (RecurrentCell.scan_projected), which
            # restarts the carry at each segment start; the chunked form has no reset yet.
            return super().scan_projected(carry, xp, mask, reverse=reverse, unroll=unroll,
                                          resets=resets)
        if self.impl == "recurrent":
            return masked_scan(self.step_projected, carry, xp, mask, reverse=reverse,
                               unroll=unroll)
        if reverse:
            xp = xp[::-1]
            mask = None if mask is None else mask[::-1]
        q, k, v, o, i, f = self._split(jnp.moveaxis(xp, 0, 1))  # batch-major (B, T, ...)
        mask_bt = None if mask is None else mask.T
        state = MLSTMMemory(carry.c, carry.n, carry.m)
        C = q.shape[1] if self.impl == "parallel" else self.chunk_size
        h, state = mlstm_chunkwise(q, k, v, i, f, state, mask_bt, chunk_size=C)
        ys = self._output(o, h)  # (B, T, H)
        if mask_bt is not None:
            ys = jnp.where(mask_bt[..., None], ys, 0.0)
            # The carry's h is each row's output at its own last valid step (or the
            # incoming h for a row with none), as a step-by-step masked scan leaves it.
            T = ys.shape[1]
            last = jnp.max(jnp.where(mask_bt, jnp.arange(T), -1), axis=1)  # (B,)
            h_last = jnp.take_along_axis(ys, jnp.maximum(last, 0)[:, None, None], 1)[:, 0]
            h_last = jnp.where((last >= 0)[:, None], h_last, carry.h)
        else:
            h_last = ys[:, -1]
        ys = jnp.moveaxis(ys, 1, 0)
        if reverse:
            ys = ys[::-1]
        return MLSTMState(h_last.astype(carry.h.dtype), *state), self._cast(ys)

    # -- diagnostics hooks ---------------------------------------------------
    @property
    def state_width(self) -> int:
        """``N·DH·DH``: the flattened matrix memory ``c``. The output ``h`` feeds nothing
        back (the mLSTM has no recurrent weights), so gradient-through-time lives in ``c``."""
        return self.num_heads * self.head_dim ** 2

    def perturbed_step(self, carry, xp_t, eps):
        """One step with ``eps`` ``(B, N·DH·DH)`` added to the (stabilised) memory ``c``
        after its update, so that it reaches both this step's readout and the next step;
        ``eps=None`` is the plain step."""
        q, k, v, o, i, f = self._split(xp_t)
        mem = _update(MLSTMMemory(carry.c, carry.n, carry.m), k, v, i, jax.nn.log_sigmoid(f))
        if eps is not None:
            mem = mem._replace(c=mem.c + eps.reshape(mem.c.shape))
        y = self._output(o, _readout(mem, q, EPS))
        return MLSTMState(y.astype(carry.h.dtype), *mem), self._cast(y)

    def gate_activations(self, carry, xp_t):
        """The forget gate ``σ(f̃)`` (per head, repeated over its DH units) and the output
        gate ``σ(õ)``. The exponential input gate has no saturating range to report."""
        _, _, _, o, _, f = self._split(xp_t)
        f = jnp.repeat(jax.nn.sigmoid(f), self.head_dim, axis=-1)
        o = jax.nn.sigmoid(o).reshape(o.shape[:-2] + (self.hidden_features,))
        return {"f": ("sigmoid", f), "o": ("sigmoid", o)}


register_cell("mlstm", MLSTMCell)
