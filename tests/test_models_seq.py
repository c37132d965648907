"""Small end-to-end models with the issue-5 layers: they learn, and they allocate nothing.

* product ratings (NNTrainer's Applications/ProductRatings shape): 2 ids -> split ->
  two embeddings -> concat -> fully connected, MSE on ratings built from latent factors;
* character-level LSTM: 8 characters -> embedding -> LSTM -> next character.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime import Model, layer
from tests.helpers import peak_alloc_during_steps


def _ratings(n: int, users: int = 8, items: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    uf, pf = rng.normal(size=(users, 3)), rng.normal(size=(items, 3))
    u, p = rng.integers(0, users, n), rng.integers(0, items, n)
    r = (uf[u] * pf[p]).sum(axis=1) + 0.5 * uf[u, 0]
    x = np.stack([u, p], axis=1).reshape(n, 1, 1, 2).astype(np.float32)
    return x, r.reshape(n, 1).astype(np.float32)


def test_product_ratings_model_learns():
    # Prepare
    specs = [layer("input", "input", input_shape="1:1:2"),
             layer("split", "split", axis=3),
             layer("embedding", "user_embed", input_layers="split(0)", in_dim=8, out_dim=5),
             layer("embedding", "product_embed", input_layers="split(1)", in_dim=10, out_dim=5),
             layer("concat", "concat", input_layers="user_embed,product_embed"),
             layer("flatten", "flatten"),
             layer("fully_connected", "fc1", unit=32, activation="relu"),
             layer("fully_connected", "out", unit=1)]
    m = Model(specs, loss="mse", seed=0).compile(batch_size=16, optimizer="adam", lr=0.01)
    x, y = _ratings(256)
    # Execute
    hist = m.fit(x, y, epochs=40, seed=1)
    # Assert: the first epoch's mean loss vs the last's
    per = len(x) // 16
    first, last = np.mean(hist.losses[:per]), np.mean(hist.losses[-per:])
    assert last < 0.2 * first, (first, last)


TEXT = "the quick brown fox jumps over the lazy dog. " * 12


def _chars(T: int = 8):
    vocab = sorted(set(TEXT))
    ids = np.array([vocab.index(c) for c in TEXT])
    starts = np.arange(len(ids) - T)
    x = np.stack([ids[s:s + T] for s in starts]).reshape(-1, 1, 1, T).astype(np.float32)
    return x, ids[starts + T], len(vocab)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_character_level_recurrent_model_learns(kind):
    # Prepare
    x, y, vocab = _chars()
    specs = [layer("input", "in", input_shape="1:1:8"),
             layer("embedding", "emb", in_dim=vocab, out_dim=12),
             layer(kind, "rnn", unit=48),
             layer("fully_connected", "out", unit=vocab)]
    m = Model(specs, loss="cross_softmax", seed=0).compile(batch_size=32, optimizer="adam", lr=0.01)
    # Execute
    hist = m.fit(x, y, epochs=15, seed=2)
    # Assert: the text is deterministic after 8 characters; the model must get there
    per = len(x) // 32
    assert np.mean(hist.losses[-per:]) < 0.25 * np.mean(hist.losses[:per])
    assert m.evaluate(x, y)["accuracy"] > 0.9


def test_sequence_training_step_allocates_almost_nothing():
    x, y, vocab = _chars()
    specs = [layer("input", "in", input_shape="1:1:8"),
             layer("embedding", "emb", in_dim=vocab, out_dim=12),
             layer("positional_encoding", "pe"),
             layer("multi_head_attention", "mha", num_heads=2),
             layer("layer_normalization", "ln"),
             layer("lstm", "lstm", unit=16, return_sequences=True),
             layer("gru", "gru", unit=16),
             layer("fully_connected", "out", unit=vocab)]
    m = Model(specs, loss="cross_softmax", seed=0).compile(batch_size=16, optimizer="adam")
    extra = peak_alloc_during_steps(m, x, y)
    assert extra < 64 * 1024, f"{extra} bytes allocated outside the pool"
