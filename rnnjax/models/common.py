"""Pieces shared by the models: embeddings, the recurrent encoder, pooling, MLP heads.

Models take explicit keyword arguments, never a ConfigDict: a task builds them from
``config.model`` (``rnnjax.tasks.base.model_kwargs``), whose schema holds the
defaults and their comments (``rnnjax/config_schema.py``). Models never import
data loading or training code: a pretrained embedding matrix arrives as an array.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.nn import Bidirectional, make_rnn
from rnnjax.nn.blocks import BlockStack
from rnnjax.nn.types import Array

#: ``model.dtype`` names -> the compute dtype handed to cells, embeddings and dense layers
#: (Flax's ``dtype``; parameters stay float32, Flax's ``param_dtype``). "float32" is None,
#: "the parameters' own": exactly what every model computed before there was a policy.
#: ``rnnjax.config_schema.DTYPES`` lists the same names (a test keeps them equal).
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """``model.dtype`` -> the compute dtype (None for float32); an unknown name says what
    the known ones are."""
    if name not in DTYPES:
        raise ValueError(f"unknown model.dtype {name!r}: the compute dtype is one of "
                         f"{list(DTYPES)} (parameters stay float32); set "
                         f"--config.model.dtype=bfloat16 or float32")
    return DTYPES[name]


def cell_dtype_kwargs(dtype, cell_kwargs) -> dict:
    """``cell_kwargs`` with the policy's compute dtype added (none for float32), refusing a
    second, conflicting ``cell_kwargs.dtype``."""
    kw = dict(cell_kwargs)
    if dtype is None:
        return kw
    if "dtype" in kw:
        raise ValueError("model.cell_kwargs.dtype and model.dtype both set the cells' compute "
                         "dtype; remove model.cell_kwargs.dtype and keep model.dtype")
    return {**kw, "dtype": dtype}


def to_float32(logits: Array) -> Array:
    """The head's output for the loss: float32 whatever the compute dtype, so the softmax,
    the cross-entropy and the MSE never run in bfloat16 (a no-op under float32)."""
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def make_encoder(*, arch: str, cell: str, in_features: int, hidden: int, num_layers: int,
                 bidirectional: bool, dropout: float, unroll: int, cell_kwargs,
                 conv_kernel: int, output_gate: bool, mlp_expansion: float, num_heads: int,
                 max_len: int, rngs: nnx.Rngs, dtype=None):
    """The sequence encoder ``config.model.arch`` names: a ``make_rnn`` stack ("rnn") or a
    :class:`~rnnjax.nn.blocks.BlockStack` ("blocks", causal, so never bidirectional).
    Both take ``(x, seq_lengths=, initial_carry=, return_carry=)`` and return
    ``(carries, ys)``, with ``initialize_carry`` per layer (see ``encoder_carry``).
    ``dtype`` is the compute dtype from :func:`compute_dtype` (None: float32)."""
    if arch == "rnn":
        if cell == "attention":
            raise ValueError("model.cell='attention' needs model.arch='blocks'")
        return make_rnn(cell, in_features, hidden, num_layers=num_layers,
                        bidirectional=bidirectional, dropout=dropout, unroll=unroll, rngs=rngs,
                        **cell_dtype_kwargs(dtype, cell_kwargs))
    if arch == "blocks":
        if dtype is not None:
            raise ValueError(f"model.dtype={jnp.dtype(dtype).name} covers model.arch='rnn' "
                             f"(every cell, embeddings and heads); the residual blocks of "
                             f"model.arch='blocks' have no mixed-precision policy yet: set "
                             f"model.dtype=float32 with blocks")
        if bidirectional:
            raise ValueError("model.arch='blocks' is causal; set model.bidirectional=False")
        return BlockStack(cell, in_features, hidden, num_layers=num_layers,
                          conv_kernel=conv_kernel, output_gate=output_gate,
                          mlp_expansion=mlp_expansion, num_heads=num_heads, max_len=max_len,
                          dropout=dropout, unroll=unroll, cell_kwargs=dict(cell_kwargs),
                          rngs=rngs)
    raise ValueError(f"unknown model.arch {arch!r}; known: ['rnn', 'blocks']")


def encoder_carry(encoder, batch_size: int):
    """The zero carry of an encoder from :func:`make_encoder`: one entry per layer."""
    if isinstance(encoder, BlockStack):
        return encoder.initialize_carry(batch_size)
    return [layer.initialize_carry(batch_size) if hasattr(layer, "initialize_carry")
            else (layer.forward.initialize_carry(batch_size),
                  layer.backward.initialize_carry(batch_size))
            for layer in encoder.layers]


def last_valid(ys: Array, mask: Array) -> Array:
    """``ys`` ``(B, T, F)`` -> ``(B, F)`` at each row's last valid step (right padding)."""
    last = jnp.maximum(jnp.sum(mask, axis=1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(ys, last[:, None, None], axis=1)[:, 0]


class Constant(nnx.Variable):
    """A non-trainable array (a frozen pretrained embedding): never in the gradient."""


class Embedder(nnx.Module):
    """Token ids ``(B, T)`` -> vectors ``(B, T, E)``: learned, or from a pretrained matrix.

    ``pretrained`` ``(V, E)`` initialises the table; ``freeze=True`` keeps it fixed
    (a :class:`Constant`, not a parameter).
    """

    def __init__(self, vocab_size: int, features: int, *, pretrained: np.ndarray | None = None,
                 freeze: bool = False, dtype=None, rngs: nnx.Rngs):
        if pretrained is not None:
            pretrained = np.asarray(pretrained, np.float32)
            if pretrained.shape != (vocab_size, features):
                raise ValueError(f"pretrained embedding has shape {pretrained.shape}, expected "
                                 f"(V, E) = ({vocab_size}, {features})")
            table = jnp.asarray(pretrained)
        else:
            table = nnx.initializers.normal(stddev=1.0)(rngs.params(), (vocab_size, features))
        self.vocab_size = vocab_size
        self.features = features
        self.frozen = freeze
        self.dtype = dtype  # the compute dtype of the vectors (None: the table's, float32)
        self.table = Constant(table) if freeze else nnx.Param(table)

    def _table(self) -> Array:
        t = self.table[...]
        return t if self.dtype is None else t.astype(self.dtype)

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self._table(), tokens, axis=0)

    def attend(self, h: Array) -> Array:
        """``(..., E) -> (..., V)``: logits against the table (tied output layer)."""
        if self.dtype is not None:
            h = h.astype(self.dtype)
        return h @ self._table().T


class EmbeddingDropout(nnx.Module):
    """Drops whole words: row ``v`` of the embedding table is zeroed with probability ``rate``
    for the whole batch (every position and row where token ``v`` occurs), and the kept rows
    are scaled by ``1 / (1 - rate)`` (Merity et al. 2017, AWD-LSTM's ``embedded_dropout``;
    Gal & Ghahramani 2016). One mask of shape ``(V,)`` per call, drawn from the ``dropout``
    stream, so ``nnx.reseed(model, dropout=...)`` and ``fold_in(rng, step)`` give one mask
    per train step. Identity when ``deterministic`` (``model.eval()``).

    It gathers the mask with the tokens instead of masking the ``(V, E)`` table: the same
    numbers, without a ``V x E`` multiply per step.
    """

    def __init__(self, rate: float, vocab_size: int, *, rngs: nnx.Rngs,
                 deterministic: bool = False):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"model.embed_dropout={rate}: a dropout rate must be in [0, 1)")
        self.rate = float(rate)
        self.vocab_size = vocab_size
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork()

    def mask(self) -> Array:
        """``(V,)`` float32: 0 for a dropped word, ``1 / (1 - rate)`` for a kept one."""
        keep = jax.random.bernoulli(self.rngs(), 1.0 - self.rate, (self.vocab_size,))
        return keep.astype(jnp.float32) / (1.0 - self.rate)

    def __call__(self, x: Array, tokens: Array) -> Array:
        """``x`` ``(B, T, E)`` embeddings of ``tokens`` ``(B, T)`` -> the same, words dropped."""
        if self.deterministic or self.rate == 0.0:
            return x
        return x * jnp.take(self.mask(), tokens, axis=0)[..., None].astype(x.dtype)


def activation_regularizers(h: Array, h_dropped: Array, mask: Array,
                            pair_mask: Array) -> tuple[Array, Array]:
    """AR and TAR of the last layer's outputs (Merity et al. 2017, sec. 4.6), unscaled.

    ``AR = mean(h_dropped ** 2)`` over the valid ``(b, t)`` and features: the L2 penalty on
    the (dropped-out) outputs that the softmax reads. ``TAR = mean((h_t - h_{t-1}) ** 2)``
    over the valid pairs ``(b, t)``, ``t >= 1``, and features, on the outputs before dropout:
    it penalises fast-changing hidden states. ``h``, ``h_dropped`` ``(B, T, F)``; ``mask``
    ``(B, T)`` the valid steps; ``pair_mask`` ``(B, T-1)`` the valid pairs (both steps valid
    and in the same packed segment). The task multiplies them by ``model.ar_alpha`` and
    ``model.tar_beta``. As in AWD-LSTM the mean runs over features too, so alpha and beta
    carry over from its code unchanged.
    """
    F = h.shape[-1]
    # Sums of squares in float32 at least: under a bfloat16 policy the outputs are bfloat16.
    ct = jnp.promote_types(h.dtype, jnp.float32)
    h, h_dropped = h.astype(ct), h_dropped.astype(ct)
    m = mask.astype(h.dtype)[..., None]
    ar = jnp.sum(jnp.square(h_dropped) * m) / jnp.maximum(jnp.sum(m) * F, 1.0)
    pm = pair_mask.astype(h.dtype)[..., None]
    diff = h[:, 1:] - h[:, :-1]
    tar = jnp.sum(jnp.square(diff) * pm) / jnp.maximum(jnp.sum(pm) * F, 1.0)
    return ar, tar


def segment_resets(segment_ids: Array | None) -> Array | None:
    """``(B, T)`` packed segment ids -> ``(B, T)`` bool, True at the first step of every
    segment after a row's first (the recurrent layers' ``resets``); None stays None."""
    if segment_ids is None:
        return None
    change = segment_ids[:, 1:] != segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros_like(change[:, :1]), change], axis=1)


class MLP(nnx.Module):
    """Dense layers with ReLU and dropout, then a linear output layer (``dtype``: the
    compute dtype, as ``nnx.Linear``'s; None computes in the inputs' and kernels' dtype)."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
                 dropout: float = 0.0, dtype=None, rngs: nnx.Rngs):
        sizes = [in_features, *hidden]
        self.hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs)
                                for a, b in itertools.pairwise(sizes)])
        self.out = nnx.Linear(sizes[-1], out_features, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        for layer in self.hidden:
            x = self.dropout(jax.nn.relu(layer(x)))
        return self.out(x)


def carry_h(carry) -> Array:
    """The hidden state ``(B, H)`` of a cell's carry (``LSTMState.h`` or the array)."""
    return carry.h if hasattr(carry, "h") else carry


def last_hidden(layer, carry) -> Array:
    """``(B, D*H)``: the final hidden state of a layer (both directions concatenated)."""
    if isinstance(layer, Bidirectional):
        return jnp.concatenate([carry_h(carry[0]), carry_h(carry[1])], axis=-1)
    return carry_h(carry)


POOLINGS = ("last", "mean", "max")


def pool(kind: str, layer, carry, ys: Array, mask: Array) -> Array:
    """Pools ``ys`` ``(B, T, F)`` with ``mask`` ``(B, T)`` into ``(B, F)``.

    ``last`` is each row's final carry (the forward direction's last valid step and
    the backward direction's first step), ``mean``/``max`` skip padding.
    """
    if kind == "last":
        return last_hidden(layer, carry)
    m = mask[..., None].astype(ys.dtype)
    if kind == "mean":
        return jnp.sum(ys * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    if kind == "max":
        return jnp.max(jnp.where(m > 0, ys, -jnp.inf), axis=1)
    raise ValueError(f"unknown model.pooling {kind!r}; known: {list(POOLINGS)}")
