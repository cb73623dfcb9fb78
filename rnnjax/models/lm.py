"""Token -> per-step logits models: language models and sequence taggers.

``TokenModel``: embedding -> recurrent stack (unidirectional for an LM) ->
dropout -> linear to ``V_out`` (optionally tied to the embedding). It takes an
initial carry per layer and returns the final ones, so a stateful LM can carry
its state across batches (truncated BPTT).

Decoding: :meth:`TokenModel.step` is a :data:`rnnjax.decoding.StepFn`
``(carry, tokens (N,), context) -> (carry, logits (N, V))`` (no context: pass None),
and :meth:`TokenModel.prefill` runs a prompt through the sequence form, so a
continuation is ``decoding.sample_decode(model.step, *model.prefill(prompt) ...)``
with the prompt's last token as each row's first input (``bos_id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from rnnjax.models.common import (
    Embedder,
    EmbeddingDropout,
    compute_dtype,
    encoder_carry,
    make_encoder,
    segment_resets,
    to_float32,
)
from rnnjax.nn.types import Array


class TokenModel(nnx.Module):
    """Tokens ``(B, T)`` -> ``(carries, logits (B, T, V_out))``; see the module docstring.

    The arguments are ``config.model``'s keys (``rnnjax/config_schema.py`` comments them):
    ``embed_dim`` E; the recurrent stack's ``cell``, ``hidden`` H, ``num_layers`` L,
    ``bidirectional``, ``dropout`` (between layers and before the output layer), ``unroll``,
    ``cell_kwargs`` (the cell's own options); ``tie_embeddings`` (output layer = the
    embedding table, needs ``V_out == V`` and ``D*H == E``); ``arch`` ("rnn" or "blocks":
    residual blocks of ``rnnjax/nn/blocks.py`` with ``cell`` or "attention" as the mixer) and
    the block options ``conv_kernel``, ``output_gate``, ``mlp_expansion``, ``num_heads``,
    ``max_len`` (unused with "rnn"); ``embed_dropout`` (whole words dropped,
    :class:`rnnjax.models.common.EmbeddingDropout`; the tied output layer reads the
    undropped table, as in AWD-LSTM); ``dtype`` the compute dtype, "float32" or "bfloat16"
    (:data:`rnnjax.models.common.DTYPES`; parameters and carries stay float32, the logits
    are float32).
    """

    def __init__(self, *, vocab_size: int, embed_dim: int, cell: str, hidden: int,
                 num_layers: int, bidirectional: bool, dropout: float, unroll: int,
                 cell_kwargs: Mapping[str, Any], tie_embeddings: bool, arch: str,
                 conv_kernel: int, output_gate: bool, mlp_expansion: float, num_heads: int,
                 max_len: int, embed_dropout: float, out_vocab_size: int | None = None,
                 dtype: str = "float32", rngs: nnx.Rngs):
        out_vocab_size = out_vocab_size or vocab_size
        # A default, unlike the other config keys: float32 unless asked (as Flax's dtype), and
        # run directories whose config.json predates the key still load.
        dt = compute_dtype(dtype)
        self.embed = Embedder(vocab_size, embed_dim, dtype=dt, rngs=rngs)
        # None at rate 0, so a model without it has exactly the state it always had.
        self.embed_drop = (EmbeddingDropout(embed_dropout, vocab_size, rngs=rngs)
                           if embed_dropout else None)
        self.encoder = make_encoder(
            arch=arch, cell=cell, in_features=embed_dim, hidden=hidden, num_layers=num_layers,
            bidirectional=bidirectional, dropout=dropout, unroll=unroll, cell_kwargs=cell_kwargs,
            conv_kernel=conv_kernel, output_gate=output_gate, mlp_expansion=mlp_expansion,
            num_heads=num_heads, max_len=max_len, rngs=rngs, dtype=dt)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.tie = bool(tie_embeddings)
        if self.tie:
            if out_vocab_size != vocab_size or self.encoder.output_features != embed_dim:
                raise ValueError("model.tie_embeddings needs the same input/output vocabulary "
                                 "and hidden (x directions) == embed_dim")
            self.out = None
        else:
            self.out = nnx.Linear(self.encoder.output_features, out_vocab_size, dtype=dt,
                                  rngs=rngs)

    def initialize_carry(self, batch_size: int):
        return encoder_carry(self.encoder, batch_size)

    def __call__(self, tokens: Array, lengths: Array | None = None, carry=None, *,
                 segment_ids: Array | None = None, return_hidden: bool = False):
        """``tokens`` ``(B, T)`` -> ``(carries, logits (B, T, V))``.

        ``segment_ids`` ``(B, T)`` int (packed rows, :mod:`rnnjax.data.packing`: 1, 2, ...
        per segment, 0 on padding): every segment starts from the initial carry, so its
        outputs are those of the segment run alone. ``return_hidden`` adds a third value
        ``(h, h_dropped)``, the last layer's outputs ``(B, T, D*H)`` before and after the
        output dropout, for AR/TAR (:func:`rnnjax.models.common.activation_regularizers`).
        """
        x = self.embed(tokens)
        if self.embed_drop is not None:
            x = self.embed_drop(x, tokens)
        extra = {}
        if segment_ids is not None:
            if not hasattr(self.encoder, "layers"):
                raise ValueError("data.pack needs model.arch='rnn': residual blocks do not "
                                 "restart at segment starts")
            extra["resets"] = segment_resets(segment_ids)
            if lengths is None:
                lengths = jnp.sum(segment_ids > 0, axis=1).astype(jnp.int32)
        carries, ys = self.encoder(x, seq_lengths=lengths, initial_carry=carry,
                                   return_carry=True, **extra)
        dropped = self.dropout(ys)
        logits = to_float32(self.embed.attend(dropped) if self.tie else self.out(dropped))
        if return_hidden:
            return carries, logits, (ys, dropped)
        return carries, logits

    def step(self, carry, tokens: Array, context=None):
        """The decoding step ``(carry, tokens (N,), context) -> (carry, logits (N, V))``.

        ``context`` is unused (an LM reads only its carry); it is there for the
        :data:`rnnjax.decoding.StepFn` contract.
        """
        del context
        carries, logits = self(tokens[:, None], carry=carry)
        return carries, logits[:, 0]

    def prefill(self, prompt: Array):
        """``prompt`` ``(B, P)``, P >= 1 -> ``(carry, last (B,))`` to start decoding from.

        ``prompt[:, :-1]`` runs through the sequence form (one scan, input projection
        hoisted) from a zero carry; its last token is left for the first decoding step,
        which feeds it and returns the logits of the first new token.
        """
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"TokenModel.prefill: prompt must be (B, P) with P >= 1, got "
                             f"{prompt.shape}")
        if prompt.shape[1] == 1:
            return self.initialize_carry(prompt.shape[0]), prompt[:, 0]
        carry, _ = self(prompt[:, :-1])
        return carry, prompt[:, -1]


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
