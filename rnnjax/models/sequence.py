"""Sequence -> vector models: the classifier and the regressor/forecaster.

``SequenceModel``: [embedding] -> recurrent stack -> pooling -> MLP head.
Inputs are token ids ``(B, T)`` (with an embedding) or real features
``(B, T, E)``; ``lengths`` ``(B,)`` mark right padding. Output ``(B, O)``: class
logits for a classifier, values for a regressor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.models.common import MLP, Embedder, last_valid, make_encoder, pool
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
    ``mlp_expansion``, ``num_heads``, ``max_len`` (see :class:`rnnjax.models.lm.TokenModel`).
    """

    def __init__(self, *, out_features: int, cell: str, hidden: int, num_layers: int,
                 bidirectional: bool, dropout: float, unroll: int, cell_kwargs: Mapping[str, Any],
                 pooling: str, head_hidden: Sequence[int], embed_dim: int,
                 freeze_embedding: bool, arch: str, conv_kernel: int, output_gate: bool,
                 mlp_expansion: float, num_heads: int, max_len: int, vocab_size: int | None = None,
                 in_features: int | None = None, pretrained: np.ndarray | None = None,
                 rngs: nnx.Rngs):
        """Give ``vocab_size`` for token inputs, else ``in_features`` (``embed_dim`` and
        ``freeze_embedding`` are then unused)."""
        if (vocab_size is None) == (in_features is None):
            raise ValueError("SequenceModel needs exactly one of vocab_size (token inputs) or "
                             "in_features (real-valued inputs)")
        if vocab_size is not None:
            self.embed = Embedder(vocab_size, embed_dim, pretrained=pretrained,
                                  freeze=freeze_embedding, rngs=rngs)
            in_features = embed_dim
        else:
            self.embed = None
        self.encoder = make_encoder(
            arch=arch, cell=cell, in_features=in_features, hidden=hidden, num_layers=num_layers,
            bidirectional=bidirectional, dropout=dropout, unroll=unroll, cell_kwargs=cell_kwargs,
            conv_kernel=conv_kernel, output_gate=output_gate, mlp_expansion=mlp_expansion,
            num_heads=num_heads, max_len=max_len, rngs=rngs)
        self.pooling = pooling
        self.head = MLP(self.encoder.output_features, tuple(head_hidden), out_features,
                        dropout=dropout, rngs=rngs)

    def __call__(self, inputs: Array, lengths: Array | None = None) -> Array:
        """``inputs`` ``(B, T)`` ids or ``(B, T, E)`` values, ``lengths`` ``(B,)`` or None
        -> ``(B, O)``."""
        x = self.embed(inputs) if self.embed is not None else inputs
        carries, ys = self.encoder(x, seq_lengths=lengths, return_carry=True)
        if lengths is None:
            mask = jnp.ones(x.shape[:2], bool)
        else:
            mask = lengths_to_mask(lengths, x.shape[1])
        if isinstance(self.encoder, BlockStack) and self.pooling == "last":
            pooled = last_valid(ys, mask)  # a block's carry is a memory, not an output
        else:
            pooled = pool(self.pooling, self.encoder.layers[-1], carries[-1], ys, mask)
        return self.head(pooled)
