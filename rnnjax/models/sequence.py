"""Sequence -> vector models: the classifier and the regressor/forecaster.

``SequenceModel``: [embedding] -> recurrent stack -> pooling -> MLP head.
Inputs are token ids ``(B, T)`` (with an embedding) or real features
``(B, T, E)``; ``lengths`` ``(B,)`` mark right padding. Output ``(B, O)``: class
logits for a classifier, values for a regressor.

Packed rows (:mod:`rnnjax.data.packing`): with ``segment_ids`` ``(B, T)`` and the
segments' ``segment_starts``/``segment_ends`` ``(B, S)``, every segment runs from the
initial carry and is pooled on its own, and the output is ``(B, S, O)``, one row per
segment (garbage where ``segment_mask`` is False).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.models.common import (
    MLP,
    Embedder,
    compute_dtype,
    last_valid,
    make_encoder,
    pool,
    segment_resets,
    to_float32,
)
from rnnjax.nn import Bidirectional
from rnnjax.nn.blocks import BlockStack
from rnnjax.nn.scan import lengths_to_mask
from rnnjax.nn.types import Array


class SequenceModel(nnx.Module):
    """``(B, T)`` ids or ``(B, T, E)`` values -> ``(B, O)``; see the module docstring.

    The arguments other than the sizes and ``pretrained`` are ``config.model``'s keys
    (``rnnjax/config_schema.py`` comments them): ``embed_dim`` and ``freeze_embedding``
    (token inputs only); the recurrent stack's ``cell``, ``hidden``, ``num_layers``,
    ``bidirectional``, ``dropout``, ``unroll``, ``cell_kwargs``; ``pooling`` (last | mean |
    max) and ``head_hidden`` (the MLP head's hidden sizes; ``dropout`` applies there too);
    ``arch`` ("rnn" or "blocks") and the block options ``conv_kernel``, ``output_gate``,
    ``mlp_expansion``, ``num_heads``, ``max_len`` (see :class:`rnnjax.models.lm.TokenModel`);
    ``dtype`` the compute dtype, "float32" or "bfloat16" (:data:`rnnjax.models.common.DTYPES`;
    parameters and carries stay float32, the output is float32).
    """

    def __init__(self, *, out_features: int, cell: str, hidden: int, num_layers: int,
                 bidirectional: bool, dropout: float, unroll: int, cell_kwargs: Mapping[str, Any],
                 pooling: str, head_hidden: Sequence[int], embed_dim: int,
                 freeze_embedding: bool, arch: str, conv_kernel: int, output_gate: bool,
                 mlp_expansion: float, num_heads: int, max_len: int, vocab_size: int | None = None,
                 in_features: int | None = None, pretrained: np.ndarray | None = None,
                 dtype: str = "float32", rngs: nnx.Rngs):
        """Give ``vocab_size`` for token inputs, else ``in_features`` (``embed_dim`` and
        ``freeze_embedding`` are then unused)."""
        if (vocab_size is None) == (in_features is None):
            raise ValueError("SequenceModel needs exactly one of vocab_size (token inputs) or "
                             "in_features (real-valued inputs)")
        # A default, unlike the other config keys: float32 unless asked (as Flax's dtype), and
        # run directories whose config.json predates the key still load.
        dt = compute_dtype(dtype)
        if vocab_size is not None:
            self.embed = Embedder(vocab_size, embed_dim, pretrained=pretrained,
                                  freeze=freeze_embedding, dtype=dt, rngs=rngs)
            in_features = embed_dim
        else:
            self.embed = None
        self.encoder = make_encoder(
            arch=arch, cell=cell, in_features=in_features, hidden=hidden, num_layers=num_layers,
            bidirectional=bidirectional, dropout=dropout, unroll=unroll, cell_kwargs=cell_kwargs,
            conv_kernel=conv_kernel, output_gate=output_gate, mlp_expansion=mlp_expansion,
            num_heads=num_heads, max_len=max_len, rngs=rngs, dtype=dt)
        self.pooling = pooling
        self.head = MLP(self.encoder.output_features, tuple(head_hidden), out_features,
                        dropout=dropout, dtype=dt, rngs=rngs)

    def __call__(self, inputs: Array, lengths: Array | None = None, *,
                 segment_ids: Array | None = None, segment_starts: Array | None = None,
                 segment_ends: Array | None = None) -> Array:
        """``inputs`` ``(B, T)`` ids or ``(B, T, E)`` values, ``lengths`` ``(B,)`` or None
        -> ``(B, O)``; packed (``segment_ids``, ``segment_starts``, ``segment_ends``)
        -> ``(B, S, O)``."""
        x = self.embed(inputs) if self.embed is not None else inputs
        if segment_ids is not None:
            return to_float32(self.head(self._pool_segments(x, lengths, segment_ids,
                                                            segment_starts, segment_ends)))
        carries, ys = self.encoder(x, seq_lengths=lengths, return_carry=True)
        if lengths is None:
            mask = jnp.ones(x.shape[:2], bool)
        else:
            mask = lengths_to_mask(lengths, x.shape[1])
        if isinstance(self.encoder, BlockStack) and self.pooling == "last":
            pooled = last_valid(ys, mask)  # a block's carry is a memory, not an output
        else:
            pooled = pool(self.pooling, self.encoder.layers[-1], carries[-1], ys, mask)
        return to_float32(self.head(pooled))

    def _pool_segments(self, x, lengths, segment_ids, starts, ends) -> Array:
        """``(B, S, F)``: each packed segment pooled as if it ran alone.

        ``last``: the forward output at the segment's last step (and, bidirectional, the
        backward output at its first step, where the reverse pass over it ends); ``mean``
        and ``max`` over the segment's steps.
        """
        if isinstance(self.encoder, BlockStack):
            raise ValueError("data.pack needs model.arch='rnn': residual blocks do not restart "
                             "at segment starts (their convolution and attention mix segments)")
        if lengths is None:
            lengths = jnp.sum(segment_ids > 0, axis=1).astype(jnp.int32)
        ys = self.encoder(x, seq_lengths=lengths, resets=segment_resets(segment_ids))
        S = starts.shape[1]
        if self.pooling == "last":
            def at(idx):  # (B, S) step indices -> (B, S, F)
                return jnp.take_along_axis(ys, idx[..., None], axis=1)

            if isinstance(self.encoder.layers[-1], Bidirectional) \
                    and self.encoder.layers[-1].merge == "concat":
                H = ys.shape[-1] // 2
                return jnp.concatenate([at(ends)[..., :H], at(starts)[..., H:]], axis=-1)
            if isinstance(self.encoder.layers[-1], Bidirectional):
                raise ValueError("packed 'last' pooling needs merge='concat' for a "
                                 "bidirectional layer")
            return at(ends)
        member = segment_ids[:, None, :] == jnp.arange(1, S + 1)[None, :, None]  # (B, S, T)
        m = member.astype(ys.dtype)
        if self.pooling == "mean":
            return jnp.einsum("bst,btf->bsf", m, ys) / jnp.maximum(
                jnp.sum(m, axis=-1, keepdims=True), 1.0)
        if self.pooling == "max":
            mx = jnp.max(jnp.where(member[..., None], ys[:, None], -jnp.inf), axis=2)
            return jnp.where(jnp.any(member, axis=-1)[..., None], mx, 0.0)  # no -inf rows
        raise ValueError(f"unknown model.pooling {self.pooling!r}")
