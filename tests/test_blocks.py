"""Residual blocks (rnnjax/nn/blocks.py) and block models: values, not shapes.

* step form == sequence form for every registered family and attention: the logits of
  ``TokenModel(arch="blocks")(tokens)`` equal those of stepping ``model.step`` token by
  token, and a prompt prefilled then continued equals one long sequence;
* beam search over ``model.step`` finds the same best hypothesis as brute-force
  enumeration of every sequence scored by the *sequence* form (an independent path);
* ragged lengths: padded steps never influence valid ones (padding contents changed,
  rows run alone without padding), outputs past a length are zero, and the final carry is
  the carry after each row's last valid step;
* the causal conv and attention against direct numpy transcriptions.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax import decoding
from rnnjax.models.lm import TokenModel
from rnnjax.models.sequence import SequenceModel
from rnnjax.nn.blocks import AttentionMixer, BlockStack, CausalConv1d, rotary
from rnnjax.nn.scan import lengths_to_mask

FAMILIES = ["lstm", "gru", "rnn_tanh", "min_gru", "min_lstm", "lru", "slstm", "mlstm",
            "rglru", "mamba2", "gated_deltanet", "attention"]
V, PAD, EOS, BOS = 4, 0, 1, 3
L = 3  # max_len of the searched sequences: V**L = 64 beams make the search exhaustive


def block_kwargs(cell, **over):
    kw = dict(arch="blocks", cell=cell, hidden=8, num_layers=2, embed_dim=8,
              bidirectional=False, dropout=0.0, unroll=1, cell_kwargs={},
              tie_embeddings=False, conv_kernel=3, output_gate=True, mlp_expansion=2.0,
              num_heads=2, max_len=16, embed_dropout=0.0)
    cell_kwargs = {"mlstm": {"num_heads": 2}}.get(cell, {})
    kw["cell_kwargs"] = cell_kwargs
    kw.update(over)
    return kw


def token_model(cell, seed=0, **over):
    model = TokenModel(vocab_size=V, rngs=nnx.Rngs(seed), **block_kwargs(cell, **over))
    # Sharpen the output layer so the hypotheses' scores are far apart (no near ties).
    model.out.kernel[...] = model.out.kernel[...] * 4.0
    model.eval()
    return model


def step_logits(model, tokens):
    """(B, T) tokens -> (B, T, V) logits by stepping ``model.step`` from a zero carry."""
    carry = model.initialize_carry(tokens.shape[0])

    def body(carry, tok):
        return model.step(carry, tok)

    return jnp.swapaxes(jax.lax.scan(body, carry, tokens.T)[1], 0, 1)


@pytest.mark.parametrize("cell", FAMILIES)
def test_step_form_equals_sequence_form_and_beam_is_exhaustive(cell):
    model = token_model(cell)
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, V)
    # Jitted calls: one program per shape compiles faster than every op of the model
    # eagerly (docs/performance.md §15).
    forward = nnx.jit(lambda m, t: m(t)[1])
    seq = forward(model, tokens)
    stepped = nnx.jit(step_logits)(model, tokens)
    np.testing.assert_allclose(stepped, seq, rtol=1e-4, atol=1e-4)

    # A prompt run through the sequence form (prefill) then continued by steps.
    @nnx.jit
    def prefill_then_step(m, prompt, nxt):
        carry, last = m.prefill(prompt)
        carry, logits1 = m.step(carry, last)
        return logits1, m.step(carry, nxt)[1]

    logits1, logits2 = prefill_then_step(model, tokens[:, :4], tokens[:, 4])
    np.testing.assert_allclose(logits1, seq[:, 3], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits2, seq[:, 4], rtol=1e-4, atol=1e-4)

    # Beam search over the step form vs brute force over the sequence form.
    @nnx.jit
    def beam(model):
        return decoding.beam_search(model.step, model.initialize_carry(1), None, bos_id=BOS,
                                    eos_id=EOS, beam_size=V ** L, max_len=L,
                                    length_penalty="none", n_best=1, pad_id=PAD)

    out = beam(model)
    full = np.array(list(itertools.product(range(V), repeat=L)))  # every length-L sequence
    inputs = np.concatenate([np.full((len(full), 1), BOS), full[:, :-1]], axis=1)
    logp = np.asarray(jax.nn.log_softmax(forward(model, jnp.asarray(inputs))), np.float64)
    hyps = {}
    for row, seq_ in enumerate(full):
        total = 0.0
        for t, tok in enumerate(seq_):
            total += logp[row, t, tok]
            if tok == EOS:
                break
        hyps[tuple(seq_[: t + 1])] = total
    ranked = sorted(hyps.items(), key=lambda kv: -kv[1])
    (best, best_lp), (_, second_lp) = ranked[0], ranked[1]
    np.testing.assert_allclose(float(out.logprobs[0, 0]), best_lp, rtol=1e-4, atol=1e-4)
    if best_lp - second_lp > 1e-3:  # a near tie: either is a correct answer
        assert int(out.lengths[0, 0]) == len(best)
        assert tuple(np.asarray(out.tokens[0, 0, : len(best)])) == best


@pytest.mark.parametrize("cell", ["lstm", "mamba2", "gated_deltanet", "mlstm", "attention"])
def test_padding_never_influences_valid_steps(cell):
    kw = {"mlstm": {"num_heads": 2}}.get(cell, {})
    stack = BlockStack(cell, 5, 8, num_layers=2, conv_kernel=3, output_gate=True,
                       mlp_expansion=2.0, num_heads=2, max_len=16, cell_kwargs=kw,
                       rngs=nnx.Rngs(0))
    B, T = 3, 7
    lengths = jnp.array([7, 3, 1])
    x = jax.random.normal(jax.random.key(0), (B, T, 5))
    junk = jax.random.normal(jax.random.key(1), (B, T, 5)) * 100
    valid = lengths_to_mask(lengths, T)[..., None]
    run = nnx.jit(lambda m, x, n: m(x, seq_lengths=n, return_carry=True))  # §15
    run_unpadded = nnx.jit(lambda m, x: m(x, return_carry=True))
    c1, y1 = run(stack, x, lengths)
    c2, y2 = run(stack, jnp.where(valid, x, junk), lengths)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), c1, c2)
    assert float(jnp.abs(jnp.where(valid, 0, y1)).max()) == 0.0  # zero past each length
    for b in range(B):  # each row alone, unpadded: same outputs and final carry
        n = int(lengths[b])
        cb, yb = run_unpadded(stack, x[b:b + 1, :n])
        np.testing.assert_allclose(y1[b, :n], yb[0], rtol=1e-4, atol=1e-4)
        jax.tree.map(lambda a, r, b=b: np.testing.assert_allclose(a[b], r[0], rtol=1e-4,
                                                                    atol=1e-4), c1, cb)


def test_causal_conv_matches_numpy():
    conv = CausalConv1d(3, 4, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
    y, state = conv(jnp.asarray(x), conv.initialize_state(2), jnp.array([6, 2]))
    w, b = np.asarray(conv.weight[...]), np.asarray(conv.bias[...])
    xp = np.concatenate([np.zeros((2, 3, 3), np.float32), x], axis=1)
    want = np.stack([sum(w[k] * xp[:, t + k] for k in range(4)) + b for t in range(6)], 1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state[0], x[0, 3:6])  # the last K-1 inputs of row 0
    np.testing.assert_array_equal(state[1], xp[1, 2:5])  # row 1 stops at length 2


def test_attention_matches_numpy_softmax():
    att = AttentionMixer(4, num_heads=1, max_len=8, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(1, 5, 4)).astype(np.float32)
    _, y = att(jnp.asarray(x), jnp.ones((1, 5), bool), jnp.array([5]))
    qkv = x @ np.asarray(att.qkv.kernel[...])
    q, k, v = np.split(qkv.reshape(1, 5, 3, 4), 3, axis=2)
    pos = jnp.arange(5)[None]
    q, k = np.asarray(rotary(jnp.asarray(q), pos))[:, :, 0], np.asarray(
        rotary(jnp.asarray(k), pos))[:, :, 0]
    s = q[0] @ k[0].T / 2.0
    s = np.where(np.tril(np.ones((5, 5), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p @ v[0, :, 0]) @ np.asarray(att.out.kernel[...])
    np.testing.assert_allclose(y[0], want, rtol=1e-4, atol=1e-5)


def test_classifier_with_blocks_pools_last_valid_step():
    kw = block_kwargs("gru")
    kw = {k: v for k, v in kw.items() if k not in ("tie_embeddings", "embed_dropout")}
    model = SequenceModel(out_features=2, pooling="last", head_hidden=(),
                          freeze_embedding=False, vocab_size=V, rngs=nnx.Rngs(0), **kw)
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, V)
    full = model(tokens, jnp.array([6, 4]))
    alone = model(tokens[1:, :4])
    np.testing.assert_allclose(full[1], alone[0], rtol=1e-5, atol=1e-5)


def test_bad_block_options_raise():
    with pytest.raises(ValueError, match="causal"):
        TokenModel(vocab_size=V, rngs=nnx.Rngs(0), **block_kwargs("gru", bidirectional=True))
    with pytest.raises(ValueError, match="needs model.arch='blocks'"):
        TokenModel(vocab_size=V, rngs=nnx.Rngs(0),
                   **block_kwargs("attention", arch="rnn"))
    with pytest.raises(ValueError, match="conv_kernel"):
        TokenModel(vocab_size=V, rngs=nnx.Rngs(0), **block_kwargs("gru", conv_kernel=1))
    with pytest.raises(ValueError, match="heads"):
        TokenModel(vocab_size=V, rngs=nnx.Rngs(0), **block_kwargs("attention", num_heads=3))

