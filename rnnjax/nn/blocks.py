"""Pre-norm residual blocks: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))``.

The layout of Griffin, Mamba-2, xLSTM and Gated DeltaNet language models, and of the
Zoology MQAR study: a stack of blocks whose temporal *mixer* is either

* :class:`RecurrentMixer`: any registered cell (``make_cell``) run as a
  :class:`~rnnjax.nn.layers.Recurrent` layer, optionally after a short causal depthwise
  convolution (:class:`CausalConv1d`, ``conv_kernel`` taps, 0 = off) and with an output
  gate ``y * silu(W_g x)``, then a linear output projection; or
* :class:`AttentionMixer`: causal multi-head softmax attention with rotary positions,
  the non-recurrent reference point. Its step form keeps a KV cache of ``max_len``
  positions, so it decodes like a recurrent mixer.

and whose channel mixer is a gated MLP (SwiGLU, :class:`GatedMLP`). Shapes: ``B`` batch,
``T`` time, ``F`` the block width (the residual stream), ``N`` heads, ``M`` cache length.

Ragged lengths (right padding, ``mask`` ``(B, T)`` True where valid): every mixer is causal
and everything else acts per position, so padded steps never influence valid ones; outputs
past each row's length are zero, as in :class:`~rnnjax.nn.layers.Recurrent`, and each
block's final carry is its state after the row's last valid step (the cell carry through
``masked_scan`` semantics, the last ``conv_kernel - 1`` valid inputs as the conv state, the
KV cache filled up to the row's length).

Carry (one per block, a :class:`MixerState`) for step-by-step decoding: every leaf has
the batch as its leading axis, so :mod:`rnnjax.decoding` can tile and reorder it.

This module must never import above ``rnnjax.nn``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.cell import make_cell
from rnnjax.nn.layers import Recurrent, prepare_mask
from rnnjax.nn.types import Array, Carry

#: The mixer name that selects attention instead of a registered cell.
ATTENTION = "attention"


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale`` over the last axis (Zhang & Sennrich 2019), in float32."""

    def __init__(self, features: int, *, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((features,)))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


class GatedMLP(nnx.Module):
    """SwiGLU (Shazeer 2020): ``W_down (silu(W_gate x) * W_up x)``, hidden ``expansion * F``."""

    def __init__(self, features: int, expansion: float, *, rngs: nnx.Rngs):
        hidden = max(1, int(round(expansion * features)))
        self.gate_up = nnx.Linear(features, 2 * hidden, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(hidden, features, use_bias=False, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        gate, up = jnp.split(self.gate_up(x), 2, axis=-1)
        return self.down(jax.nn.silu(gate) * up)


def _gather_window(xx: Array, start: Array, size: int) -> Array:
    """``xx`` ``(B, L, F)``, ``start`` ``(B,)`` -> ``xx[b, start_b : start_b + size]``."""
    return jax.vmap(lambda a, s: jax.lax.dynamic_slice_in_dim(a, s, size, 0))(xx, start)


class CausalConv1d(nnx.Module):
    """A depthwise causal convolution over time with ``kernel_size`` taps (H3, Mamba, GDN).

    ``y_t = b + sum_k w_k * x_{t-K+1+k}``: step ``t`` sees only steps ``<= t``. The state
    is the last ``K-1`` inputs ``(B, K-1, F)`` (zeros at the start), so the sequence form
    and the step form agree.
    """

    def __init__(self, features: int, kernel_size: int, *, rngs: nnx.Rngs):
        if kernel_size < 2:
            raise ValueError(f"CausalConv1d: kernel_size must be >= 2, got {kernel_size}")
        self.kernel_size = kernel_size
        self.features = features
        bound = 1.0 / kernel_size ** 0.5  # PyTorch's Conv1d init for a depthwise kernel
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), (kernel_size, features),
                                                   minval=-bound, maxval=bound))
        self.bias = nnx.Param(jnp.zeros((features,)))

    def initialize_state(self, batch_size: int, dtype=jnp.float32) -> Array:
        return jnp.zeros((batch_size, self.kernel_size - 1, self.features), dtype)

    def __call__(self, x: Array, state: Array, lengths: Array) -> tuple[Array, Array]:
        """``x`` ``(B, T, F)``, ``state`` ``(B, K-1, F)``, ``lengths`` ``(B,)`` ->
        ``(y (B, T, F), state after each row's last valid step)``."""
        K, T = self.kernel_size, x.shape[1]
        xx = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # (B, K-1+T, F)
        w = self.weight[...].astype(x.dtype)
        y = sum(xx[:, k:k + T] * w[k] for k in range(K)) + self.bias[...].astype(x.dtype)
        return y, _gather_window(xx, lengths, K - 1)


class MixerState(NamedTuple):
    """One block's carry: the mixer's memory and its short-conv window (None when off)."""

    memory: Carry
    conv: Array | None


class RecurrentMixer(nnx.Module):
    """[causal conv] -> cell (as a :class:`Recurrent` layer) -> [output gate] -> linear.

    ``x`` ``(B, T, F)`` -> ``(carry, y (B, T, F))``. The cell maps ``F -> F``
    (``make_cell(cell, F, F, **cell_kwargs)``); ``output_gate`` multiplies its output by
    ``silu(W_g x)`` computed from the mixer's input (Mamba, Griffin, GDN).
    """

    def __init__(self, cell: str, features: int, *, conv_kernel: int, output_gate: bool,
                 unroll: int = 1, cell_kwargs: dict | None = None, rngs: nnx.Rngs):
        self.conv = CausalConv1d(features, conv_kernel, rngs=rngs) if conv_kernel else None
        self.rnn = Recurrent(make_cell(cell, features, features, rngs=rngs,
                                       **dict(cell_kwargs or {})),
                             unroll=unroll)
        width = self.rnn.output_features
        self.gate = nnx.Linear(features, width, use_bias=False, rngs=rngs) \
            if output_gate else None
        self.out = nnx.Linear(width, features, use_bias=False, rngs=rngs)

    def initialize_carry(self, batch_size: int) -> MixerState:
        conv = None if self.conv is None else self.conv.initialize_state(batch_size)
        return MixerState(self.rnn.initialize_carry(batch_size), conv)

    def __call__(self, x: Array, mask: Array, lengths: Array,
                 carry: MixerState | None = None) -> tuple[MixerState, Array]:
        if carry is None:
            carry = self.initialize_carry(x.shape[0])
        u, conv_state = x, carry.conv
        if self.conv is not None:
            u, conv_state = self.conv(x, carry.conv, lengths)
        memory, y = self.rnn(u, mask=mask, initial_carry=carry.memory, return_carry=True)
        if self.gate is not None:
            y = y * jax.nn.silu(self.gate(x))
        return MixerState(memory, conv_state), self.out(y)


class KVCache(NamedTuple):
    """The attention mixer's carry: keys and values ``(B, M, N, Dh)`` (rotated keys) and the
    number of positions filled, ``pos`` ``(B,)`` int32."""

    k: Array
    v: Array
    pos: Array


def rotary(x: Array, positions: Array, base: float = 10000.0) -> Array:
    """Rotary position embedding (Su et al. 2021), rotate-half form.

    ``x`` ``(B, T, N, Dh)`` with ``Dh`` even, ``positions`` ``(B, T)`` int.
    """
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # (Dh/2,)
    angle = positions.astype(jnp.float32)[..., None, None] * freq  # (B, T, 1, Dh/2)
    cos, sin = jnp.cos(angle).astype(x.dtype), jnp.sin(angle).astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class AttentionMixer(nnx.Module):
    """Causal multi-head softmax attention with rotary positions; the same interface as
    :class:`RecurrentMixer`.

    Sequence form with no carry: attention within the ``T`` given steps (training). With a
    carry (decoding, or a prompt continued): queries at positions ``pos + t`` attend to the
    cache's first ``pos`` entries and causally to the new steps; the new keys and values are
    written at ``pos .. pos + len - 1``. The cache holds ``max_len`` positions; writes past
    it are dropped (so a decode must stay within ``model.max_len`` tokens in all).
    """

    def __init__(self, features: int, *, num_heads: int, max_len: int, rngs: nnx.Rngs):
        if features % num_heads or (features // num_heads) % 2:
            raise ValueError(f"AttentionMixer: width {features} must split into num_heads="
                             f"{num_heads} heads of an even size (rotary positions); change "
                             f"model.hidden or model.num_heads")
        if max_len < 1:
            raise ValueError(f"AttentionMixer: max_len must be >= 1, got {max_len}")
        self.num_heads, self.head_dim, self.max_len = num_heads, features // num_heads, max_len
        self.qkv = nnx.Linear(features, 3 * features, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(features, features, use_bias=False, rngs=rngs)

    def initialize_carry(self, batch_size: int) -> MixerState:
        z = jnp.zeros((batch_size, self.max_len, self.num_heads, self.head_dim))
        return MixerState(KVCache(z, z, jnp.zeros((batch_size,), jnp.int32)), None)

    def __call__(self, x: Array, mask: Array, lengths: Array,
                 carry: MixerState | None = None) -> tuple[MixerState, Array]:
        B, T, F = x.shape
        N, Dh = self.num_heads, self.head_dim
        start = jnp.zeros((B,), jnp.int32) if carry is None else carry.memory.pos
        positions = start[:, None] + jnp.arange(T)[None, :]  # (B, T)
        q, k, v = jnp.split(self.qkv(x).reshape(B, T, 3 * N, Dh), 3, axis=2)
        q, k = rotary(q, positions), rotary(k, positions)
        causal = jnp.tril(jnp.ones((T, T), bool))[None] & mask[:, None, :]  # (B, Tq, Tk)
        if carry is None:
            keys, values, allowed = k, v, causal
            cache = self.initialize_carry(B).memory
        else:
            cache = carry.memory
            in_cache = jnp.arange(self.max_len)[None, :] < start[:, None]  # (B, M)
            keys = jnp.concatenate([cache.k.astype(k.dtype), k], axis=1)
            values = jnp.concatenate([cache.v.astype(v.dtype), v], axis=1)
            allowed = jnp.concatenate(
                [jnp.broadcast_to(in_cache[:, None, :], (B, T, self.max_len)), causal], axis=2)
        logits = jnp.einsum("bqnd,bknd->bnqk", q, keys) / jnp.sqrt(Dh).astype(q.dtype)
        logits = jnp.where(allowed[:, None], logits.astype(jnp.float32), -1e30)
        weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
        y = jnp.einsum("bnqk,bknd->bqnd", weights, values).reshape(B, T, F)
        # Write the valid new steps into the cache; invalid ones go out of range and drop.
        idx = jnp.where(mask, positions, self.max_len)  # (B, T)
        rows = jnp.arange(B)[:, None]
        new = KVCache(cache.k.at[rows, idx].set(k.astype(cache.k.dtype), mode="drop"),
                      cache.v.at[rows, idx].set(v.astype(cache.v.dtype), mode="drop"),
                      start + lengths.astype(jnp.int32))
        return MixerState(new, None), self.out(y)


class Block(nnx.Module):
    """``x + drop(mixer(norm(x)))``, then ``x + drop(mlp(norm(x)))`` (no MLP when
    ``mlp_expansion == 0``, as in Mamba's blocks)."""

    def __init__(self, mixer: RecurrentMixer | AttentionMixer, features: int, *,
                 mlp_expansion: float, dropout: float, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(features)
        self.mixer = mixer
        self.norm2 = RMSNorm(features) if mlp_expansion else None
        self.mlp = GatedMLP(features, mlp_expansion, rngs=rngs) if mlp_expansion else None
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def _drop(self, x):
        return x if self.dropout is None else self.dropout(x)

    def initialize_carry(self, batch_size: int) -> MixerState:
        return self.mixer.initialize_carry(batch_size)

    def __call__(self, x, mask, lengths, carry=None):
        carry, y = self.mixer(self.norm1(x), mask, lengths, carry)
        x = x + self._drop(y)
        if self.mlp is not None:
            x = x + self._drop(self.mlp(self.norm2(x)))
        return carry, x


def make_mixer(mixer: str, features: int, *, conv_kernel: int, output_gate: bool,
               num_heads: int, max_len: int, unroll: int = 1, cell_kwargs: dict | None = None,
               rngs: nnx.Rngs) -> RecurrentMixer | AttentionMixer:
    """``"attention"`` or a registered cell name -> a mixer of width ``features``."""
    if mixer == ATTENTION:
        if cell_kwargs:
            raise ValueError(f"the attention mixer takes no cell options, got "
                             f"{sorted(cell_kwargs)} (model.cell_kwargs)")
        return AttentionMixer(features, num_heads=num_heads, max_len=max_len, rngs=rngs)
    return RecurrentMixer(mixer, features, conv_kernel=conv_kernel, output_gate=output_gate,
                          unroll=unroll, cell_kwargs=cell_kwargs, rngs=rngs)


class BlockStack(nnx.Module):
    """``num_layers`` residual blocks and a final RMSNorm: ``(B, T, E) -> (B, T, F)``.

    The same call as :class:`~rnnjax.nn.layers.StackedRecurrent`:
    ``stack(x, seq_lengths=None, mask=None, initial_carry=None, return_carry=None)`` returns
    ``y`` ``(B, T, F)`` (zero past each row's length), or ``(carries, y)`` with one
    :class:`MixerState` per block. An input width ``E != F`` is projected by a linear layer.

    Args:
      mixer: ``"attention"`` or a registered cell name (``model.cell``).
      in_features: E; features: F, the residual width (``model.hidden``).
      num_layers: blocks; conv_kernel: short-conv taps before a recurrent cell (0 = off);
      output_gate: ``y * silu(W_g x)`` after a recurrent cell; mlp_expansion: the gated
      MLP's hidden width over F (0 = no MLP); num_heads, max_len: attention heads and KV
      cache positions; dropout: on each residual branch; cell_kwargs: the cell's
      options, a dict (a cell's own ``num_heads`` must not clash with attention's).
    """

    def __init__(self, mixer: str, in_features: int, features: int, *, num_layers: int,
                 conv_kernel: int, output_gate: bool, mlp_expansion: float, num_heads: int,
                 max_len: int, dropout: float = 0.0, unroll: int = 1,
                 cell_kwargs: dict | None = None, rngs: nnx.Rngs):
        if num_layers < 1:
            raise ValueError(f"BlockStack: num_layers must be >= 1, got {num_layers}")
        if conv_kernel < 0 or conv_kernel == 1:
            raise ValueError(f"BlockStack: conv_kernel must be 0 (off) or >= 2, got "
                             f"{conv_kernel} (model.conv_kernel)")
        if mlp_expansion < 0:
            raise ValueError(f"BlockStack: mlp_expansion must be >= 0, got {mlp_expansion}")
        self.in_features, self.features = in_features, features
        self.proj = nnx.Linear(in_features, features, rngs=rngs) \
            if in_features != features else None
        self.blocks = nnx.List([
            Block(make_mixer(mixer, features, conv_kernel=conv_kernel, output_gate=output_gate,
                             num_heads=num_heads, max_len=max_len, unroll=unroll,
                             cell_kwargs=cell_kwargs, rngs=rngs),
                  features, mlp_expansion=mlp_expansion, dropout=dropout, rngs=rngs)
            for _ in range(num_layers)])
        self.norm = RMSNorm(features)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def output_features(self) -> int:
        return self.features

    def initialize_carry(self, batch_size: int) -> list[MixerState]:
        return [block.initialize_carry(batch_size) for block in self.blocks]

    def __call__(self, x: Array, *, seq_lengths: Array | None = None,
                 mask: Array | None = None, initial_carry: list | None = None,
                 return_carry: bool | None = None):
        if x.ndim != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"BlockStack: inputs must be (B, T, E={self.in_features}), got "
                             f"shape {tuple(x.shape)}")
        B, T = x.shape[:2]
        mask_tb = prepare_mask(x.shape, seq_lengths=seq_lengths, mask=mask, time_major=False,
                               where="BlockStack")
        mask_bt = jnp.ones((B, T), bool) if mask_tb is None else mask_tb.T
        # Right padding: a row's length is its number of valid steps.
        lengths = jnp.sum(mask_bt, axis=1).astype(jnp.int32)
        n = len(self.blocks)
        if initial_carry is None:
            initial_carry = [None] * n
        elif len(initial_carry) != n:
            raise ValueError(f"BlockStack: initial_carry needs {n} entries (one per block), "
                             f"got {len(initial_carry)}")
        h = x if self.proj is None else self.proj(x)
        carries = []
        for block, c0 in zip(self.blocks, initial_carry, strict=True):
            c, h = block(h, mask_bt, lengths, c0)
            carries.append(c)
        y = jnp.where(mask_bt[..., None], self.norm(h), 0)
        return (carries, y) if return_carry else y
