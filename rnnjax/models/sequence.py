"""Sequence -> vector models: the classifier and the regressor/forecaster.

``SequenceModel``: [embedding] -> recurrent stack -> pooling -> MLP head.
Inputs are token ids ``(B, T)`` (with an embedding) or real features
``(B, T, E)``; ``lengths`` ``(B,)`` mark right padding. Output ``(B, O)``: class
logits for a classifier, values for a regressor.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.models.common import MLP, Embedder, build_encoder, pool
from rnnjax.nn.scan import lengths_to_mask
from rnnjax.nn.types import Array


class SequenceModel(nnx.Module):
    def __init__(self, cfg, *, out_features: int, vocab_size: int | None = None,
                 in_features: int | None = None, pretrained: np.ndarray | None = None,
                 rngs: nnx.Rngs):
        """``cfg`` is ``config.model``. Give ``vocab_size`` for token inputs, else ``in_features``."""
        if (vocab_size is None) == (in_features is None):
            raise ValueError("SequenceModel needs exactly one of vocab_size (token inputs) or "
                             "in_features (real-valued inputs)")
        if vocab_size is not None:
            self.embed = Embedder(vocab_size, cfg.embed_dim, pretrained=pretrained,
                                  freeze=cfg.get("freeze_embedding", False), rngs=rngs)
            in_features = cfg.embed_dim
        else:
            self.embed = None
        self.encoder = build_encoder(cfg, in_features, rngs)
        self.pooling = cfg.pooling
        self.head = MLP(self.encoder.output_features, tuple(cfg.head_hidden), out_features,
                        dropout=cfg.dropout, rngs=rngs)

    def __call__(self, inputs: Array, lengths: Array | None = None) -> Array:
        """``inputs`` ``(B, T)`` ids or ``(B, T, E)`` values, ``lengths`` ``(B,)`` or None -> ``(B, O)``."""
        x = self.embed(inputs) if self.embed is not None else inputs
        carries, ys = self.encoder(x, seq_lengths=lengths, return_carry=True)
        if lengths is None:
            mask = jnp.ones(x.shape[:2], bool)
        else:
            mask = lengths_to_mask(lengths, x.shape[1])
        pooled = pool(self.pooling, self.encoder.layers[-1], carries[-1], ys, mask)
        return self.head(pooled)
