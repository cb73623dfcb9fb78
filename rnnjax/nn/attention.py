"""Attention over a padded memory: Bahdanau (additive) and Luong (dot, general).

An attention module scores a query against every position of a memory (the
encoder outputs) and returns the weighted sum of the memory and the weights:

    attn(query (B, Hq) or (B, T, Hq), memory (B, S, F), mask (B, S)[, keys])
        -> (context (B, F) or (B, T, F), weights (B, S) or (B, T, S))

Scores (``q`` a query, ``m_s`` the memory at source position ``s``):

* ``bahdanau`` (Bahdanau et al. 2015): ``v . tanh(W_q q + W_m m_s + b)``, width A;
* ``luong_dot`` (Luong et al. 2015): ``q . m_s`` (needs ``Hq == F``);
* ``luong_general`` (Luong et al. 2015): ``q . (W m_s)`` with ``W`` ``(F, Hq)``.

The query-independent half of a score (``W_m m_s + b`` for Bahdanau, ``W m_s``
for general) depends only on the memory, so :meth:`precompute` computes it once
per source sentence; a decoder passes the result as ``keys`` at every step
instead of recomputing an ``(B, S, F) x (F, A)`` matmul per token.

Masking: ``mask[b, s]`` is True at real source positions. Padded positions get
weight exactly 0 (not just a small number), and the weights over the real
positions sum to 1. A row with no real position gets all-zero weights and a
zero context rather than NaN.

This module holds attention only: it must never import cells, layers, models,
data or training code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.types import Array

__all__ = [
    "ATTENTIONS",
    "Attention",
    "BahdanauAttention",
    "LuongAttention",
    "make_attention",
    "masked_softmax",
]


def masked_softmax(scores: Array, mask: Array) -> Array:
    """Softmax over the last axis of ``scores`` ``(B, ..., S)`` with ``mask`` ``(B, S)``.

    Masked positions are exactly 0 and the rest sum to 1; an all-masked row is all 0.
    """
    if mask.ndim != 2 or mask.shape[0] != scores.shape[0] or mask.shape[1] != scores.shape[-1]:
        raise ValueError(f"masked_softmax: mask must be (B, S) = ({scores.shape[0]}, "
                         f"{scores.shape[-1]}) for scores of shape {tuple(scores.shape)}, got "
                         f"{tuple(mask.shape)}")
    m = mask.astype(bool).reshape(mask.shape[:1] + (1,) * (scores.ndim - 2) + mask.shape[1:])
    scores = scores.astype(jnp.float32)
    # finfo.min, not -inf: an all-masked row would give exp(-inf - -inf) = NaN; here it gives a
    # uniform row that the where below zeroes. exp(min - max) underflows to exactly 0 otherwise.
    w = jax.nn.softmax(jnp.where(m, scores, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.where(m, w, 0.0)


class Attention(nnx.Module):
    """Base class: validation, masking and the weighted sum; subclasses define the score.

    Subclasses implement :meth:`precompute` (``memory (B, S, F) -> keys`` or None) and
    :meth:`scores` (``query (B, Q.., Hq), keys or memory -> (B, Q.., S)``).
    """

    query_features: int
    memory_features: int

    def precompute(self, memory: Array) -> Array | None:
        """The query-independent part of the score, once per memory; None if there is none."""
        return None

    def scores(self, query: Array, memory: Array, keys: Array | None) -> Array:
        raise NotImplementedError

    def _check(self, query: Array, memory: Array, mask: Array) -> None:
        name = type(self).__name__
        if memory.ndim != 3 or memory.shape[-1] != self.memory_features:
            raise ValueError(f"{name}: memory must be (B, S, F) with F={self.memory_features}, "
                             f"got {tuple(memory.shape)}")
        if query.ndim not in (2, 3) or query.shape[-1] != self.query_features:
            raise ValueError(f"{name}: query must be (B, Hq) or (B, T, Hq) with "
                             f"Hq={self.query_features}, got {tuple(query.shape)}")
        if query.shape[0] != memory.shape[0] or mask.shape != memory.shape[:2]:
            raise ValueError(f"{name}: query {tuple(query.shape)}, memory "
                             f"{tuple(memory.shape)} and mask {tuple(mask.shape)} must share "
                             f"B, and mask must be (B, S)")

    def __call__(self, query: Array, memory: Array, mask: Array,
                 keys: Array | None = None) -> tuple[Array, Array]:
        """``query`` ``(B, Hq)`` or ``(B, T, Hq)`` -> ``(context, weights)``.

        ``context`` is ``(B, F)`` or ``(B, T, F)``; ``weights`` ``(B, S)`` or ``(B, T, S)``.
        ``keys`` is :meth:`precompute` of the same memory (computed here when None).
        """
        self._check(query, memory, mask)
        if keys is None:
            keys = self.precompute(memory)
        w = masked_softmax(self.scores(query, memory, keys), mask)
        if query.ndim == 2:
            ctx = jnp.einsum("bs,bsf->bf", w, memory.astype(jnp.float32))
        else:
            ctx = jnp.einsum("bts,bsf->btf", w, memory.astype(jnp.float32))
        return ctx.astype(memory.dtype), w


class BahdanauAttention(Attention):
    """Additive attention: ``score(q, m_s) = v . tanh(q W_q + m_s W_m + b)``.

    Parameters: ``w_query`` ``(Hq, A)``, ``w_memory`` ``(F, A)``, ``bias`` ``(A,)``,
    ``v`` ``(A,)``. :meth:`precompute` returns ``m W_m + b`` ``(B, S, A)``.
    """

    def __init__(self, query_features: int, memory_features: int, features: int, *,
                 rngs: nnx.Rngs):
        for n, v in (("query_features", query_features), ("memory_features", memory_features),
                     ("features", features)):
            if v < 1:
                raise ValueError(f"BahdanauAttention: {n} must be >= 1, got {v}")
        init = nnx.initializers.lecun_normal()
        self.query_features = query_features
        self.memory_features = memory_features
        self.features = features
        self.w_query = nnx.Param(init(rngs.params(), (query_features, features)))
        self.w_memory = nnx.Param(init(rngs.params(), (memory_features, features)))
        self.bias = nnx.Param(jnp.zeros((features,)))
        # A small v keeps the initial weights near uniform (every position gets a gradient).
        self.v = nnx.Param(nnx.initializers.normal(stddev=1.0 / features ** 0.5)(
            rngs.params(), (features,)))

    def precompute(self, memory: Array) -> Array:
        return memory @ self.w_memory[...] + self.bias[...]  # (B, S, A)

    def scores(self, query, memory, keys):
        q = query @ self.w_query[...]  # (B, [T,] A)
        if query.ndim == 2:
            return jnp.tanh(q[:, None, :] + keys) @ self.v[...]  # (B, S)
        return jnp.tanh(q[:, :, None, :] + keys[:, None, :, :]) @ self.v[...]  # (B, T, S)


class LuongAttention(Attention):
    """Multiplicative attention: ``dot`` ``q . m_s`` or ``general`` ``q . (m_s W)``.

    ``general`` has one parameter ``w`` ``(F, Hq)``; :meth:`precompute` returns
    ``m W`` ``(B, S, Hq)``. ``dot`` has none and needs ``Hq == F``.
    """

    scorings = ("dot", "general")

    def __init__(self, query_features: int, memory_features: int, score: str = "general", *,
                 rngs: nnx.Rngs):
        if score not in self.scorings:
            raise ValueError(f"LuongAttention: unknown score {score!r}; known: "
                             f"{list(self.scorings)}")
        if score == "dot" and query_features != memory_features:
            raise ValueError(f"LuongAttention(dot) needs query and memory of the same width, got "
                             f"{query_features} and {memory_features}; use score='general' or "
                             f"'bahdanau', or make the decoder hidden size equal to the "
                             f"encoder output size (D*H)")
        self.query_features = query_features
        self.memory_features = memory_features
        self.score = score
        if score == "general":
            self.w = nnx.Param(nnx.initializers.lecun_normal()(
                rngs.params(), (memory_features, query_features)))

    def precompute(self, memory):
        return memory @ self.w[...] if self.score == "general" else None

    def scores(self, query, memory, keys):
        k = memory if keys is None else keys  # (B, S, Hq)
        if query.ndim == 2:
            return jnp.einsum("bh,bsh->bs", query, k)
        return jnp.einsum("bth,bsh->bts", query, k)


#: Config names -> constructors ``(query_features, memory_features, features, rngs)``.
ATTENTIONS = {
    "bahdanau": lambda q, m, a, rngs: BahdanauAttention(q, m, a, rngs=rngs),
    "luong_dot": lambda q, m, a, rngs: LuongAttention(q, m, "dot", rngs=rngs),
    "luong_general": lambda q, m, a, rngs: LuongAttention(q, m, "general", rngs=rngs),
}


def make_attention(name: str, query_features: int, memory_features: int, features: int = 0, *,
                   rngs: nnx.Rngs) -> Attention:
    """Builds an attention by config name; ``features`` is Bahdanau's width A (0 = Hq)."""
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; known: {sorted(ATTENTIONS)} (or 'none' "
                         f"in a seq2seq config for no attention)")
    return ATTENTIONS[name](query_features, memory_features, features or query_features, rngs)
