"""Token -> per-step logits models: language models and sequence taggers.

``TokenModel``: embedding -> recurrent stack (unidirectional for an LM) ->
dropout -> linear to ``V_out`` (optionally tied to the embedding). It takes an
initial carry per layer and returns the final ones, so a stateful LM can carry
its state across batches (truncated BPTT) and a sampler can step it.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rnnjax.models.common import Embedder, build_encoder
from rnnjax.nn.types import Array


class TokenModel(nnx.Module):
    def __init__(self, cfg, *, vocab_size: int, out_vocab_size: int | None = None,
                 rngs: nnx.Rngs):
        out_vocab_size = out_vocab_size or vocab_size
        self.embed = Embedder(vocab_size, cfg.embed_dim, rngs=rngs)
        self.encoder = build_encoder(cfg, cfg.embed_dim, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.tie = bool(cfg.get("tie_embeddings", False))
        if self.tie:
            if out_vocab_size != vocab_size or self.encoder.output_features != cfg.embed_dim:
                raise ValueError("model.tie_embeddings needs the same input/output vocabulary "
                                 "and hidden (x directions) == embed_dim")
            self.out = None
        else:
            self.out = nnx.Linear(self.encoder.output_features, out_vocab_size, rngs=rngs)

    def initialize_carry(self, batch_size: int):
        return [layer.initialize_carry(batch_size) if hasattr(layer, "initialize_carry")
                else (layer.forward.initialize_carry(batch_size),
                      layer.backward.initialize_carry(batch_size))
                for layer in self.encoder.layers]

    def __call__(self, tokens: Array, lengths: Array | None = None, carry=None):
        """``tokens`` ``(B, T)`` -> ``(carries, logits (B, T, V))``."""
        x = self.embed(tokens)
        carries, ys = self.encoder(x, seq_lengths=lengths, initial_carry=carry,
                                   return_carry=True)
        ys = self.dropout(ys)
        logits = self.embed.attend(ys) if self.tie else self.out(ys)
        return carries, logits

    def step(self, carry, token: Array):
        """One decoding step: ``token`` ``(B,)`` -> ``(carry, logits (B, V))``."""
        carries, logits = self(token[:, None], carry=carry)
        return carries, logits[:, 0]


def token_cross_entropy(logits: Array, targets: Array, mask: Array,
                        label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Masked token cross-entropy. Returns ``(sum of nats, number of tokens)``."""
    import optax

    V = logits.shape[-1]
    if label_smoothing:
        onehot = optax.smooth_labels(jnp.eye(V)[targets], label_smoothing)
        nll = optax.softmax_cross_entropy(logits, onehot)
    else:
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = mask.astype(nll.dtype)
    return jnp.sum(nll * mask), jnp.sum(mask)
