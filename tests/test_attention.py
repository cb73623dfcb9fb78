"""Attention values against a float64 numpy reference, and masking of padded source positions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.nn.attention import (
    BahdanauAttention,
    LuongAttention,
    make_attention,
    masked_softmax,
)

B, S, T, HQ, F, A = 3, 5, 4, 6, 7, 8
LENGTHS = np.array([5, 2, 3])


def inputs(seed=0, hq=HQ, f=F):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, hq)).astype(np.float32)
    qs = rng.normal(size=(B, T, hq)).astype(np.float32)
    mem = rng.normal(size=(B, S, f)).astype(np.float32)
    mask = np.arange(S)[None, :] < LENGTHS[:, None]
    return q, qs, mem, mask


def np_attend(scores, mem, mask):
    """float64 masked softmax over the real positions only, and the weighted sum."""
    w = np.zeros_like(scores)
    for b in range(scores.shape[0]):
        n = mask[b].sum()
        s = scores[b, ..., :n]
        e = np.exp(s - s.max(-1, keepdims=True))
        w[b, ..., :n] = e / e.sum(-1, keepdims=True)
    ctx = np.einsum("b...s,bsf->b...f", w, mem)
    return ctx, w


def reference(attn, query, mem, mask):
    q = np.asarray(query, np.float64)
    m = np.asarray(mem, np.float64)
    if isinstance(attn, BahdanauAttention):
        wq = np.asarray(attn.w_query[...], np.float64)
        wm = np.asarray(attn.w_memory[...], np.float64)
        b, v = np.asarray(attn.bias[...], np.float64), np.asarray(attn.v[...], np.float64)
        qp = q @ wq  # (B, [T,] A)
        mp = m @ wm + b  # (B, S, A)
        if q.ndim == 2:
            scores = np.tanh(qp[:, None, :] + mp) @ v
        else:
            scores = np.tanh(qp[:, :, None, :] + mp[:, None]) @ v
    else:
        k = m if attn.score == "dot" else m @ np.asarray(attn.w[...], np.float64)
        scores = np.einsum("b...h,bsh->b...s", q, k)
    return np_attend(scores, m, mask)


def build(name):
    hq = F if name == "luong_dot" else HQ
    return make_attention(name, hq, F, A, rngs=nnx.Rngs(0)), hq


NAMES = ["bahdanau", "luong_dot", "luong_general"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seq", [False, True], ids=["step", "sequence"])
def test_values_match_numpy(name, seq):
    attn, hq = build(name)
    q, qs, mem, mask = inputs(1, hq=hq)
    query = qs if seq else q
    ctx, w = attn(jnp.asarray(query), jnp.asarray(mem), jnp.asarray(mask))
    ref_ctx, ref_w = reference(attn, query, mem, mask)
    np.testing.assert_allclose(np.asarray(w), ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ctx), ref_ctx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_padded_positions_get_exactly_zero_weight(name):
    attn, hq = build(name)
    q, qs, mem, mask = inputs(2, hq=hq)
    for query in (q, qs):
        _, w = attn(jnp.asarray(query), jnp.asarray(mem), jnp.asarray(mask))
        w = np.asarray(w)
        pad = np.broadcast_to(~mask.reshape(B, *(1,) * (w.ndim - 2), S), w.shape)
        assert np.all(w[pad] == 0.0)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    # Whatever sits in the padding cannot leak into the context.
    noisy = np.where(mask[..., None], mem, 1e3 * np.random.default_rng(3).normal(size=mem.shape))
    c1, _ = attn(jnp.asarray(q), jnp.asarray(mem), jnp.asarray(mask))
    c2, _ = attn(jnp.asarray(q), jnp.asarray(noisy.astype(np.float32)), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(c1), np.asarray(c2), rtol=1e-6, atol=1e-6)


def test_sequence_query_equals_per_step_queries():
    attn, _ = build("bahdanau")
    _, qs, mem, mask = inputs(4)
    keys = attn.precompute(jnp.asarray(mem))
    ctx, w = attn(jnp.asarray(qs), jnp.asarray(mem), jnp.asarray(mask), keys)
    for t in range(T):
        ct, wt = attn(jnp.asarray(qs[:, t]), jnp.asarray(mem), jnp.asarray(mask), keys)
        np.testing.assert_allclose(np.asarray(w[:, t]), np.asarray(wt), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(ctx[:, t]), np.asarray(ct), rtol=1e-6, atol=1e-6)


def test_masked_softmax_all_masked_row_is_zero_not_nan():
    scores = jnp.asarray(np.random.default_rng(5).normal(size=(2, 3)), jnp.float32)
    mask = jnp.asarray([[True, False, True], [False, False, False]])
    w = np.asarray(masked_softmax(scores, mask))
    assert np.all(np.isfinite(w))
    np.testing.assert_array_equal(w[1], 0.0)
    e = np.exp(np.asarray(scores[0])[[0, 2]])
    np.testing.assert_allclose(w[0, [0, 2]], e / e.sum(), rtol=1e-6)
    assert w[0, 1] == 0.0


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="unknown attention"):
        make_attention("scaled_dot", 4, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="same width"):
        LuongAttention(4, 6, "dot", rngs=nnx.Rngs(0))
    attn, _ = build("luong_general")
    q, _, mem, mask = inputs()
    with pytest.raises(ValueError, match="mask must be"):
        attn(jnp.asarray(q), jnp.asarray(mem), jnp.asarray(mask[:, :3]))
    with pytest.raises(ValueError, match="Hq="):
        attn(jnp.asarray(q[:, :3]), jnp.asarray(mem), jnp.asarray(mask))
