"""Embedding dropout and AR/TAR (issue 13): identity at evaluation, mask rates, one mask
per word, values against numpy on a fixed batch, gradients by float64 finite differences."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from rnnjax.models.common import EmbeddingDropout, activation_regularizers
from rnnjax.models.lm import TokenModel, token_cross_entropy
from rnnjax.tasks.base import activation_penalty

#: The model keys of ``model.arch="blocks"``, at values that the "rnn" stack ignores.
RNN_ARCH = dict(arch="rnn", conv_kernel=0, output_gate=False, mlp_expansion=0.0, num_heads=1,
                max_len=1)


def _model(embed_dropout=0.0, dropout=0.0, V=11, seed=0, **kw):
    return TokenModel(vocab_size=V, embed_dim=6, cell="lstm", hidden=5, num_layers=2,
                      bidirectional=False, dropout=dropout, unroll=1,
                      cell_kwargs=kw.pop("cell_kwargs", {"impl": "scan"}), tie_embeddings=False,
                      embed_dropout=embed_dropout, rngs=nnx.Rngs(params=seed, dropout=seed + 1),
                      **RNN_ARCH,
                      **kw)


def _tokens(B=3, T=7, V=11, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (B, T)), jnp.int32)


def test_embedding_dropout_is_bitwise_identity_at_evaluation():
    tokens = _tokens()
    model = _model(embed_dropout=0.5, dropout=0.3)
    model.eval()
    _, with_drop = model(tokens)
    model.embed_drop = None  # the same parameters, no embedding dropout at all
    _, without = model(tokens)
    np.testing.assert_array_equal(np.asarray(with_drop), np.asarray(without))
    x = jnp.ones((2, 3, 4))
    layer = EmbeddingDropout(0.5, 9, rngs=nnx.Rngs(dropout=0), deterministic=True)
    assert layer(x, jnp.zeros((2, 3), jnp.int32)) is x


def test_embedding_dropout_rate_within_5_sigma_and_kept_rows_rescaled():
    V, p = 20000, 0.3
    layer = EmbeddingDropout(p, V, rngs=nnx.Rngs(dropout=3))
    for _ in range(3):  # a fresh mask per call
        m = np.asarray(layer.mask())
        dropped = np.mean(m == 0)
        assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / V), dropped
        np.testing.assert_allclose(m[m != 0], 1 / (1 - p), rtol=1e-6)


def test_one_mask_per_word_shared_over_time_and_rows():
    V, p = 6, 0.5
    tokens = jnp.asarray(np.tile(np.arange(V), (4, 3)), jnp.int32)  # every word 12 times
    x = jnp.ones(tokens.shape + (5,))
    layer = EmbeddingDropout(p, V, rngs=nnx.Rngs(dropout=0))
    masks = []
    for _ in range(8):
        y = np.asarray(layer(x, tokens))
        per_word = []
        for v in range(V):
            vals = y[np.asarray(tokens) == v]  # (occurrences, E)
            assert np.all(vals == vals[0, 0]), v  # one value: all positions, rows, features
            per_word.append(vals[0, 0])
        assert set(np.round(per_word, 6)) <= {0.0, 2.0}
        masks.append(tuple(per_word))
    assert len(set(masks)) > 1  # a new mask per call (per batch)


def _numpy_ar_tar(h, hd, mask, pair):
    ar_num = ar_den = tar_num = tar_den = 0.0
    B, T, F = h.shape
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                ar_num += sum(float(hd[b, t, f]) ** 2 for f in range(F))
                ar_den += F
            if t >= 1 and pair[b, t - 1]:
                tar_num += sum((float(h[b, t, f]) - float(h[b, t - 1, f])) ** 2
                               for f in range(F))
                tar_den += F
    return ar_num / ar_den, tar_num / tar_den


def test_ar_tar_match_numpy_on_a_fixed_batch():
    rng = np.random.default_rng(0)
    B, T, F = 3, 6, 4
    h = rng.normal(size=(B, T, F)).astype(np.float32)
    hd = (h * (rng.random((B, T, F)) > 0.3) / 0.7).astype(np.float32)
    lengths = np.array([6, 4, 1])
    mask = np.arange(T)[None] < lengths[:, None]
    seg = np.array([[1, 1, 1, 2, 2, 2], [1, 2, 2, 2, 0, 0], [1, 0, 0, 0, 0, 0]])
    pair = mask[:, 1:] & mask[:, :-1] & (seg[:, 1:] == seg[:, :-1])
    ar, tar = activation_regularizers(jnp.asarray(h), jnp.asarray(hd), jnp.asarray(mask),
                                      jnp.asarray(pair))
    ar_np, tar_np = _numpy_ar_tar(h, hd, mask, pair)
    np.testing.assert_allclose(float(ar), ar_np, rtol=1e-6)
    np.testing.assert_allclose(float(tar), tar_np, rtol=1e-6)
    # Through the task helper: alpha * AR + beta * TAR, segments honoured.
    cfg = ml_collections.ConfigDict({"ar_alpha": 2.0, "tar_beta": 0.5})
    penalty, metrics = activation_penalty(cfg, (jnp.asarray(h), jnp.asarray(hd)),
                                          jnp.asarray(mask), jnp.asarray(seg))
    np.testing.assert_allclose(float(penalty), 2.0 * ar_np + 0.5 * tar_np, rtol=1e-6)
    off = ml_collections.ConfigDict({"ar_alpha": 0.0, "tar_beta": 0.0})
    assert activation_penalty(off, (h, hd), jnp.asarray(mask))[1] == {}


def test_lm_loss_adds_ar_tar_of_the_models_own_outputs():
    """The LM task's train loss is CE + alpha AR + beta TAR of the last layer's outputs."""
    from rnnjax.tasks.lm import LMTask

    tokens = _tokens(B=2, T=9)
    model = _model(dropout=0.25)
    model.train()
    graphdef, state = nnx.split(model)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    cfg = ml_collections.ConfigDict({"model": {"ar_alpha": 2.0, "tar_beta": 1.0},
                                     "data": {"stateful": False}})
    task = LMTask.__new__(LMTask)
    task.config = cfg
    def fresh():  # the same dropout keys for both calls: a copy of the rng counts
        return nnx.merge(graphdef, jax.tree.map(lambda v: v, state))

    loss, (metrics, _) = task.loss(fresh(), batch, {}, True)
    _, logits, (h, hd) = fresh()(batch["inputs"], return_hidden=True)
    nats, n = token_cross_entropy(logits, batch["targets"], jnp.ones(batch["targets"].shape))
    h, hd = np.asarray(h), np.asarray(hd)
    assert not np.array_equal(h, hd)  # dropout is on: AR reads the dropped outputs
    ar_np = np.mean(hd.astype(np.float64) ** 2)
    tar_np = np.mean(np.diff(h.astype(np.float64), axis=1) ** 2)
    np.testing.assert_allclose(float(loss), float(nats / n) + 2 * ar_np + tar_np, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ar"]), ar_np, rtol=1e-5)


@pytest.mark.parametrize("which", ["embed", "ar_tar"])
def test_gradients_match_float64_finite_differences(x64, which):
    """The loss with embedding dropout (one fixed mask) and AR/TAR, against central
    differences in float64 for a few coordinates of the embedding table and W_hh."""
    tokens = _tokens(B=2, T=6, V=7)
    model = _model(embed_dropout=0.4 if which == "embed" else 0.0, dropout=0.2, V=7,
                   cell_kwargs={"impl": "scan", "param_dtype": jnp.float64})
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    alpha, beta = (0.0, 0.0) if which == "embed" else (2.0, 1.0)
    cfg = ml_collections.ConfigDict({"ar_alpha": alpha, "tar_beta": beta})

    def loss(p):
        m = nnx.merge(graphdef, p, jax.tree.map(lambda v: v, rest))  # same masks every call
        _, logits, hidden = m(tokens[:, :-1], return_hidden=True)
        mask = jnp.ones(tokens[:, 1:].shape, jnp.float64)
        nats, n = token_cross_entropy(logits, tokens[:, 1:], mask)
        penalty, _ = activation_penalty(cfg, hidden, mask)
        return nats / n + penalty

    loss = jax.jit(loss)
    g = jax.jit(jax.grad(loss))(params)
    flat, unflat = jax.flatten_util.ravel_pytree(params)
    gflat, _ = jax.flatten_util.ravel_pytree(g)
    assert np.abs(np.asarray(gflat)).max() > 0
    rng = np.random.default_rng(1)
    eps = 1e-6
    for i in rng.choice(flat.size, 12, replace=False):
        e = jnp.zeros_like(flat).at[i].set(eps)
        fd = (loss(unflat(flat + e)) - loss(unflat(flat - e))) / (2 * eps)
        np.testing.assert_allclose(float(gflat[i]), float(fd), rtol=1e-5, atol=1e-9)
    if which == "embed":  # a dropped word's row gets no gradient
        table_grad = np.asarray(g["embed"]["table"][...])
        used = np.unique(np.asarray(tokens[:, :-1]))
        dropped = [v for v in used if np.all(table_grad[v] == 0)]
        kept = [v for v in used if np.any(table_grad[v] != 0)]
        assert kept and len(dropped) + len(kept) == len(used)
