"""The encoder-decoder (seq2seq) model, with optional attention and a pure decoding step.

``Seq2Seq(src_vocab_size=, tgt_vocab_size=, rngs=, **model args)``; the model arguments are
``config.model``'s keys (``configs/addition.py`` comments them), all required:

==================  ====================================================================
``cell``            any cell name (``lstm``, ``gru``, ``rnn_tanh``, ``min_gru`` ...), both sides
``hidden``          encoder H per direction
``num_layers``      encoder L
``bidirectional``   bidirectional encoder (D = 2)
``decoder_layers``  decoder L (0 = ``num_layers``)
``decoder_hidden``  decoder H (0 = D * ``hidden``, which makes the bridge an identity)
``embed_dim``       E, for source and target embeddings
``share_embeddings`` one table for source and target (needs one vocabulary)
``bridge``          ``project``: encoder final carries -> decoder initial carry (below);
                    ``zeros``: the decoder starts from zeros (information only via attention)
``attention``       ``none`` | ``bahdanau`` | ``luong_dot`` | ``luong_general``
``attention_features``  Bahdanau's width A (0 = decoder H)
``input_feeding``   Luong only: feed the last attentional vector into the next step's input
``dropout``         between recurrent layers (both sides) and before the output layer
``unroll``          ``lax.scan`` unroll of the sequence forms
``cell_kwargs``     the cell's own options (both sides)
``dtype``           the compute dtype, ``float32`` or ``bfloat16`` (``models.common.DTYPES``):
                    embeddings, both RNNs, bridge, combine and output layer; parameters,
                    carries, attention scores and softmax, and the logits stay float32
==================  ====================================================================

The bridge. Decoder layer ``l`` (of ``Ld``) starts from encoder layer
``min(l + max(Le - Ld, 0), Le - 1)``: the top layers are aligned when the encoder
is deeper, and a deeper decoder's extra layers start from the encoder's top
layer. For a bidirectional encoder each carry component (``h``, and ``c`` for an
LSTM) of the forward and backward final carries is concatenated, ``(B, D*H_enc)``.
Where ``D*H_enc == H_dec`` that is the decoder's carry as it is (identity, no
parameters); otherwise each component gets its own linear map
``(D*H_enc) -> H_dec`` (``bridge[l][i]``; no nonlinearity, so an LSTM's cell
state keeps its range).

The decoder, per target step t (token ``y_{t-1}``, ``<bos>`` first):

* no attention: ``h_t = RNN(e(y_{t-1}))``; ``logits = W_o h_t``;
* ``bahdanau``: ``c_t = attn(s_{t-1}, memory)`` with ``s_{t-1}`` the top layer's
  previous hidden state; ``h_t = RNN([e(y_{t-1}); c_t])``; ``logits = W_o [h_t; c_t]``;
* ``luong_*``: ``h_t = RNN(e(y_{t-1})`` [``; h~_{t-1}`` with input feeding]``)``;
  ``c_t = attn(h_t, memory)``; ``h~_t = tanh(W_c [c_t; h_t])``; ``logits = W_o h~_t``.

The step function. :meth:`Seq2Seq.encode` returns ``(carry, context)`` and
:meth:`Seq2Seq.step` is ``(carry, tokens (N,), context) -> (carry, logits (N, V))``,
the interface of :mod:`rnnjax.decoding`: ``carry`` is ``{"rnn": [per-layer
carries], "feed": (N, H_dec)}`` (``feed`` only with input feeding) and ``context``
is ``{"memory": (N, S, F), "mask": (N, S)}`` plus ``"keys"`` (the attention's
precomputed memory projection) when the attention has one. Every leaf has leading
axis N, so beam search can tile and reorder them. The step applies no dropout (it
is the inference step); training paths pass per-step dropout masks instead
(``Dropout`` modules must not draw random numbers inside a ``lax.scan``).

Teacher forcing (:meth:`Seq2Seq.teacher_forced`) uses the sequence form where it
exists: without attention, or with Luong attention without input feeding, the
decoder RNN runs over the whole target in one ``Recurrent`` call (input
projection hoisted out of the loop) and attention is one batched einsum. With
Bahdanau or input feeding, each step needs the previous one's output, so it is a
``lax.scan`` over the step. :meth:`Seq2Seq.unroll` is that scan, with a per-token
choice between the gold token and the model's own previous prediction
(scheduled sampling, free running).

Models never import data loading or training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.models.common import (
    Embedder,
    carry_h,
    cell_dtype_kwargs,
    compute_dtype,
    to_float32,
)
from rnnjax.nn import Bidirectional, make_rnn
from rnnjax.nn.attention import ATTENTIONS, make_attention
from rnnjax.nn.types import Array

BRIDGES = ("project", "zeros")


def bridge_source_layer(l: int, enc_layers: int, dec_layers: int) -> int:
    """The encoder layer whose final carry starts decoder layer ``l`` (see module docstring)."""
    return min(l + max(enc_layers - dec_layers, 0), enc_layers - 1)


class Seq2Seq(nnx.Module):
    """Encoder-decoder; see the module docstring for the arguments and equations."""

    def __init__(self, *, src_vocab_size: int, tgt_vocab_size: int, cell: str, hidden: int,
                 num_layers: int, bidirectional: bool, decoder_layers: int, decoder_hidden: int,
                 embed_dim: int, share_embeddings: bool, bridge: str, attention: str,
                 attention_features: int, input_feeding: bool, dropout: float, unroll: int,
                 cell_kwargs: Mapping[str, Any], dtype: str = "float32", rngs: nnx.Rngs):
        D = 2 if bidirectional else 1
        # A default, unlike the other config keys: float32 unless asked (as Flax's dtype), and
        # run directories whose config.json predates the key still load.
        dt = compute_dtype(dtype)
        cell_kwargs = cell_dtype_kwargs(dt, cell_kwargs)
        self.attention_name = attention or "none"
        if self.attention_name != "none" and self.attention_name not in ATTENTIONS:
            raise ValueError(f"unknown model.attention {self.attention_name!r}; known: "
                             f"{['none', *sorted(ATTENTIONS)]}")
        self.bridge_mode = bridge
        if self.bridge_mode not in BRIDGES:
            raise ValueError(f"unknown model.bridge {self.bridge_mode!r}; known: {list(BRIDGES)}")
        self.input_feeding = bool(input_feeding)
        if self.input_feeding and not self.attention_name.startswith("luong"):
            raise ValueError("model.input_feeding applies to Luong attention (luong_dot, "
                             "luong_general); Bahdanau attention always feeds its context into "
                             "the RNN. Set model.input_feeding=False or choose a luong attention")
        E = embed_dim
        H_enc = hidden
        L_dec = decoder_layers or num_layers
        H_dec = decoder_hidden or D * H_enc
        F = D * H_enc  # memory width

        self.share_embeddings = bool(share_embeddings)
        self.src_embed = Embedder(src_vocab_size, E, dtype=dt, rngs=rngs)
        if self.share_embeddings:
            if src_vocab_size != tgt_vocab_size:
                raise ValueError(f"model.share_embeddings needs one vocabulary, got source "
                                 f"{src_vocab_size} and target {tgt_vocab_size} tokens")
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = Embedder(tgt_vocab_size, E, dtype=dt, rngs=rngs)
        self.encoder = make_rnn(cell, E, H_enc, num_layers=num_layers, bidirectional=bidirectional,
                                dropout=dropout, unroll=unroll, rngs=rngs, **dict(cell_kwargs))

        if self.attention_name == "none":
            self.attention = None
            dec_in, out_in = E, H_dec
        else:
            self.attention = make_attention(self.attention_name, H_dec, F,
                                            attention_features, rngs=rngs)
            if self.attention_name == "bahdanau":
                dec_in, out_in = E + F, H_dec + F
            else:
                dec_in, out_in = E + (H_dec if self.input_feeding else 0), H_dec
        self.combine = (nnx.Linear(F + H_dec, H_dec, dtype=dt, rngs=rngs)
                        if self.attention_name.startswith("luong") else None)
        self.decoder = make_rnn(cell, dec_in, H_dec, num_layers=L_dec, dropout=dropout,
                                unroll=unroll, rngs=rngs, **dict(cell_kwargs))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Linear(out_in, tgt_vocab_size, dtype=dt, rngs=rngs)

        # Bridge: one Linear per carry component per decoder layer, or None (identity/zeros).
        L_enc = num_layers
        n_components = len(jax.tree.leaves(self.decoder.layers[0].initialize_carry(1)))
        if self.bridge_mode == "project" and F != H_dec:
            self.bridge = nnx.List([
                nnx.List([nnx.Linear(F, H_dec, dtype=dt, rngs=rngs)
                          for _ in range(n_components)])
                for _ in range(L_dec)])
        else:
            self.bridge = None
        self.dims = {"D": D, "H_enc": H_enc, "H_dec": H_dec, "F": F, "L_enc": L_enc,
                     "L_dec": L_dec, "out_in": out_in, "V": tgt_vocab_size}

    # ------------------------------------------------------------------ encoder
    def encode(self, src: Array, src_lengths: Array) -> tuple[Any, dict[str, Array]]:
        """``src`` ``(B, S)`` ids, ``src_lengths`` ``(B,)`` -> ``(decoder carry, context)``."""
        if src.ndim != 2:
            raise ValueError(f"Seq2Seq.encode: src must be (B, S) token ids, got {src.shape}")
        x = self.src_embed(src)
        carries, memory = self.encoder(x, seq_lengths=src_lengths, return_carry=True)
        mask = jnp.arange(src.shape[1])[None, :] < src_lengths[:, None]
        context = {"memory": memory, "mask": mask}
        if self.attention is not None:
            keys = self.attention.precompute(memory)
            if keys is not None:
                context["keys"] = keys
        return self.bridge_carry(carries, src.shape[0]), context

    def bridge_carry(self, enc_carries: list, batch_size: int) -> dict[str, Any]:
        """Encoder final carries (one per encoder layer) -> the decoder's initial carry."""
        d = self.dims
        rnn = []
        for l, layer in enumerate(self.decoder.layers):
            zero = layer.initialize_carry(batch_size)
            if self.bridge_mode == "zeros":
                rnn.append(zero)
                continue
            src_layer = bridge_source_layer(l, d["L_enc"], d["L_dec"])
            c = enc_carries[src_layer]
            if isinstance(self.encoder.layers[src_layer], Bidirectional):
                c = jax.tree.map(lambda f, b: jnp.concatenate([f, b], axis=-1), c[0], c[1])
            leaves = jax.tree.leaves(c)
            if self.bridge is not None:
                # Back to the carry's dtype (float32) after a bfloat16 projection.
                leaves = [lin(x).astype(z.dtype) for lin, x, z
                          in zip(self.bridge[l], leaves, jax.tree.leaves(zero))]
            rnn.append(jax.tree.unflatten(jax.tree.structure(zero), leaves))
        carry: dict[str, Any] = {"rnn": rnn}
        if self.input_feeding:
            carry["feed"] = jnp.zeros((batch_size, d["H_dec"]), jnp.float32)
        return carry

    # ------------------------------------------------------------------ one step
    def _step(self, carry, token: Array, context, drop=None):
        """One decoder step; returns ``(carry, logits (N, V), weights (N, S) or None)``.

        ``drop`` (training only) holds this step's multiplicative dropout masks:
        ``between`` (one ``(N, H_dec)`` per layer above the first) and ``out``.
        """
        x = self.tgt_embed(token)
        rnn = carry["rnn"]
        weights = ctx = None
        if self.attention_name == "bahdanau":
            ctx, weights = self.attention(carry_h(rnn[-1]), context["memory"], context["mask"],
                                          context.get("keys"))
            x = jnp.concatenate([x, ctx], axis=-1)
        elif self.input_feeding:
            x = jnp.concatenate([x, carry["feed"]], axis=-1)
        new_rnn = []
        for l, layer in enumerate(self.decoder.layers):
            if l > 0 and drop is not None and drop.get("between"):
                x = x * drop["between"][l - 1]
            c, x = layer.cell(rnn[l], x)
            new_rnn.append(c)
        new_carry = {"rnn": new_rnn}
        if self.attention_name == "bahdanau":
            h = jnp.concatenate([x, ctx], axis=-1)
        elif self.attention is not None:
            ctx, weights = self.attention(x, context["memory"], context["mask"],
                                          context.get("keys"))
            h = jnp.tanh(self.combine(jnp.concatenate([ctx, x], axis=-1)))
            if self.input_feeding:
                new_carry["feed"] = h.astype(carry["feed"].dtype)
        else:
            h = x
        if drop is not None and "out" in drop:
            h = h * drop["out"]
        return new_carry, to_float32(self.out(h)), weights

    def step(self, carry, tokens: Array, context) -> tuple[Any, Array]:
        """The decoding step ``(carry, tokens (N,), context) -> (carry, logits (N, V))``."""
        carry, logits, _ = self._step(carry, tokens, context)
        return carry, logits

    def step_with_attention(self, carry, tokens: Array, context):
        """As :meth:`step`, also returning the attention weights ``(N, S)`` (None without)."""
        return self._step(carry, tokens, context)

    # ------------------------------------------------------------------ sequences
    def _dropout_masks(self, T: int, B: int):
        """Per-step dropout masks for a scan, drawn outside it; None when dropout is off."""
        if self.dropout.rate == 0.0 or self.dropout.deterministic:
            return None
        d = self.dims
        drop = {"out": self.dropout(jnp.ones((T, B, d["out_in"])))}
        if self.decoder.dropout is not None:
            drop["between"] = [self.decoder.dropout(jnp.ones((T, B, d["H_dec"])))
                               for _ in range(d["L_dec"] - 1)]
        return drop

    @property
    def has_sequence_form(self) -> bool:
        """True when teacher forcing runs as one RNN call (no Bahdanau, no input feeding)."""
        return self.attention_name != "bahdanau" and not self.input_feeding

    def teacher_forced(self, carry, context, decoder_inputs: Array, *,
                       use_scan: bool = False) -> tuple[Array, Array | None]:
        """Teacher forcing: ``decoder_inputs`` ``(B, T)`` -> ``(logits (B, T, V), weights)``.

        ``weights`` is ``(B, T, S)`` with attention, else None. The sequence form is used
        where it exists (module docstring) unless ``use_scan``; both compute the same.
        """
        if use_scan or not self.has_sequence_form:
            logits, weights, _ = self.unroll(carry, context, decoder_inputs)
            return logits, weights
        x = self.tgt_embed(decoder_inputs)
        _, ys = self.decoder(x, initial_carry=carry["rnn"], return_carry=True)  # (B, T, H)
        weights = None
        if self.attention is not None:
            ctx, weights = self.attention(ys, context["memory"], context["mask"],
                                          context.get("keys"))
            ys = jnp.tanh(self.combine(jnp.concatenate([ctx, ys], axis=-1)))
        return to_float32(self.out(self.dropout(ys))), weights

    def unroll(self, carry, context, decoder_inputs: Array, teacher_mask: Array | None = None,
               sample_key: Array | None = None) -> tuple[Array, Array | None, Array]:
        """The decoder as a ``lax.scan`` over :meth:`_step`, with a per-token input choice.

        Args:
          carry, context: from :meth:`encode`.
          decoder_inputs: ``(B, T)`` gold inputs (``<bos> y``).
          teacher_mask: ``(B, T)`` bool, True where step t reads the gold token, False
            where it reads the model's own prediction from step t-1 (its argmax, or a
            sample when ``sample_key`` is given), under ``stop_gradient``: no gradient
            flows through the choice. Step 0 always reads the gold ``<bos>``. None = all
            gold (teacher forcing).
          sample_key: a PRNG key to sample the model's tokens instead of taking the argmax.

        Returns:
          ``(logits (B, T, V), weights (B, T, S) or None, fed (B, T) int32 tokens read)``.
        """
        B, T = decoder_inputs.shape
        if teacher_mask is None:
            teacher_mask = jnp.ones((B, T), bool)
        teacher_mask = teacher_mask.at[:, 0].set(True)
        drop = self._dropout_masks(T, B)
        keys = (jax.random.split(sample_key, T) if sample_key is not None
                else jnp.zeros((T,), jnp.uint32))

        def body(state, xs):
            c, prev_logits = state
            gold, use_gold, key, d = xs
            if sample_key is not None:
                own = jax.random.categorical(key, prev_logits.astype(jnp.float32), axis=-1)
            else:
                own = jnp.argmax(prev_logits, axis=-1)
            tok = jnp.where(use_gold, gold, jax.lax.stop_gradient(own).astype(gold.dtype))
            c, logits, w = self._step(c, tok, context, d)
            return (c, logits), (logits, w, tok)

        init = (carry, jnp.zeros((B, self.dims["V"]), jnp.float32))
        xs = (decoder_inputs.T, teacher_mask.T, keys, drop)
        _, (logits, weights, fed) = jax.lax.scan(body, init, xs)
        logits = jnp.swapaxes(logits, 0, 1)
        weights = None if weights is None else jnp.swapaxes(weights, 0, 1)
        return logits, weights, fed.T

    def __call__(self, src: Array, src_lengths: Array, decoder_inputs: Array):
        """Teacher-forced forward: ``-> (logits (B, T, V), weights (B, T, S) or None)``."""
        carry, context = self.encode(src, src_lengths)
        return self.teacher_forced(carry, context, decoder_inputs)
