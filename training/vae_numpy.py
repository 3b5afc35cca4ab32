"""The trained attention-VAE's forward pass for a few persons (the service's requests in
flight), in numpy, one person at a time.

The service encodes each batch of requests with the model in eval mode; through torch, a
batch of four persons took about 2.9 ms on this machine, most of it the dispatch of some 40
small operators (each linear layer split a person at a time so that a person's rows round
alike in any batch). Here each person's events go through the same layers with numpy on that
person's rows alone (its padding left out: a padded event gets no attention and no pooling
weight), so a person's outputs are the same bits whoever shares the batch, by construction,
and a batch of four takes a fraction of the time. The outputs agree with the torch module's to
float32 rounding (tests/code/test_vae_numpy.py), and the time-gap buckets are
:func:`training.vae.gap_bucket`'s exactly (the same float32 steps; checked over every float32
gap pattern in steps of 7 once, and on every bucket's edges by the tests). No torch operator
runs here: a torch operator in a thread that never set torch's thread count starts an OpenMP
worker that spins beside it.

With the C extension, the kernel ``vae_person`` (pipelines/_native.c) runs the same layers on
one person's events in one call, in a fixed order of operations, so the property holds there
too; it agrees with the numpy pass to float32 rounding (the same tests) and took 1.36 ms for
the benchmark model's four persons against numpy's 2.17 ms (the fastest of 15 alternated
rounds each, on a loaded machine). ``XINTEREST_NATIVE=0`` keeps the numpy pass.

Serving processes limit BLAS to one thread (see :func:`serving.loader.one_thread_per_request`).

Larger batches (offline evaluation, training) keep using the torch module.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.native import kernels
from training.vae import GAP_BUCKETS, PAD, UNKNOWN, AttentionVAE

_EPS = 1e-5  # LayerNorm's


def gap_buckets(gap_seconds: NDArray[np.float32]) -> NDArray[np.int64]:
    """:func:`training.vae.gap_bucket` in numpy, step for step in float32."""
    minutes = np.maximum(gap_seconds.astype(np.float32, copy=False), np.float32(0)) / np.float32(60.0)
    return np.clip(np.floor(np.log2(np.float32(1.0) + minutes)), 0, GAP_BUCKETS - 1).astype(np.int64)


def _layer_norm(x: NDArray[np.float32], weight: NDArray[np.float32], bias: NDArray[np.float32]) -> NDArray[np.float32]:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(_EPS)) * weight + bias  # type: ignore[no-any-return]


def _softmax(x: NDArray[np.float32]) -> NDArray[np.float32]:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def _slot(owner: Any, name: str, value: NDArray[np.float32] | None = None) -> NDArray[np.float32] | None:
    """``owner``'s array ``name`` ("norm1.0": the first of the pair ``norm1``); with ``value``,
    set it instead."""
    attribute, _, index = name.partition(".")
    if value is None:
        held = getattr(owner, attribute)
        return held[int(index)] if index else held  # type: ignore[no-any-return]
    if index:
        pair = list(getattr(owner, attribute))
        pair[int(index)] = value
        setattr(owner, attribute, tuple(pair))
    else:
        setattr(owner, attribute, value)
    return value


class _Layer:
    """One pre-norm Transformer encoder layer (self-attention, ReLU feed-forward)."""

    def __init__(self, weights: dict[str, NDArray[np.float32]], prefix: str, n_heads: int) -> None:
        def w(name: str) -> NDArray[np.float32]:
            return weights[prefix + name]

        self.n_heads = n_heads
        self.norm1, self.norm2 = (w("norm1.weight"), w("norm1.bias")), (w("norm2.weight"), w("norm2.bias"))
        self.qkv, self.qkv_bias = np.ascontiguousarray(w("self_attn.in_proj_weight").T), w("self_attn.in_proj_bias")
        self.out, self.out_bias = np.ascontiguousarray(w("self_attn.out_proj.weight").T), w("self_attn.out_proj.bias")
        self.ff1, self.ff1_bias = np.ascontiguousarray(w("linear1.weight").T), w("linear1.bias")
        self.ff2, self.ff2_bias = np.ascontiguousarray(w("linear2.weight").T), w("linear2.bias")

    def __call__(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        n, d = x.shape
        h, dk = self.n_heads, d // self.n_heads
        qkv = _layer_norm(x, *self.norm1) @ self.qkv + self.qkv_bias  # (n, 3d)
        q, k, v = (qkv[:, i * d : (i + 1) * d].reshape(n, h, dk).transpose(1, 0, 2) for i in range(3))
        attention = _softmax(q @ k.transpose(0, 2, 1) * np.float32(1.0 / math.sqrt(dk)))  # (h, n, n)
        x = x + (attention @ v).transpose(1, 0, 2).reshape(n, d) @ self.out + self.out_bias
        hidden = np.maximum(_layer_norm(x, *self.norm2) @ self.ff1 + self.ff1_bias, np.float32(0))
        return x + hidden @ self.ff2 + self.ff2_bias  # type: ignore[no-any-return]


class NumpyVAE:
    """:meth:`AttentionVAE.encode` (the posterior mean and the pooling weights) and
    :meth:`AttentionVAE.decode` in eval mode, person by person."""

    def __init__(self, vae: AttentionVAE) -> None:
        weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in vae.state_dict().items()}
        c = vae.config
        self.n_items, self.d_model = c.n_items, c.d_model
        self.item, self.action = weights["embed.item.weight"], weights["embed.action.weight"]
        self.platform, self.gap = weights["embed.platform.weight"], weights["embed.gap.weight"]
        self.embed_norm = (weights["embed.norm.weight"], weights["embed.norm.bias"])
        self.layers = [_Layer(weights, f"encoder.layers.{i}.", c.n_heads) for i in range(c.n_layers)]
        self.query = weights["pool.query"]
        self.key, self.key_bias = np.ascontiguousarray(weights["pool.key.weight"].T), weights["pool.key.bias"]
        self.bag = weights.get("bag.weight") if vae.bag is not None else None
        self.mu, self.mu_bias = np.ascontiguousarray(weights["to_mu.weight"].T), weights["to_mu.bias"]
        self.hidden, self.hidden_bias = np.ascontiguousarray(weights["decoder.0.weight"].T), weights["decoder.0.bias"]
        self.logits, self.logits_bias = np.ascontiguousarray(weights["decoder.3.weight"].T), weights["decoder.3.bias"]
        self._packed = self._pack(c.n_heads)

    def _pack(self, n_heads: int) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
        """Every weight in one float32 array, the offset of each (in the C kernel's order:
        ``vae_person`` in pipelines/_native.c) and the dimensions: what the kernel reads. The
        numpy pass's arrays become views of that array, so the weights are held once."""
        names = ["item", "action", "platform", "gap", "embed_norm.0", "embed_norm.1", "query", "key", "key_bias"]
        names += ["bag", "mu", "mu_bias", "hidden", "hidden_bias", "logits", "logits_bias"]
        slots: list[tuple[Any, str]] = [(self, name) for name in names]
        for layer in self.layers:
            slots += [(layer, name) for name in ("norm1.0", "norm1.1", "qkv", "qkv_bias", "out", "out_bias")]
            slots += [(layer, name) for name in ("norm2.0", "norm2.1", "ff1", "ff1_bias", "ff2", "ff2_bias")]
        arrays = [_slot(owner, name) for owner, name in slots]
        arrays = [np.zeros(0, np.float32) if a is None else a for a in arrays]  # no bag branch
        layout = np.concatenate([[0], np.cumsum([a.size for a in arrays])[:-1]]).astype(np.int64)
        params = np.concatenate([np.ascontiguousarray(a, np.float32).ravel() for a in arrays])
        for (owner, name), a, at in zip(slots, arrays, layout, strict=True):
            if a.size:
                _slot(owner, name, params[at : at + a.size].reshape(a.shape))
        d_ff = self.layers[0].ff1.shape[1] if self.layers else 1
        d_bag = self.bag.shape[1] if self.bag is not None else 0
        dims = [self.d_model, n_heads, len(self.layers), d_ff, d_bag, len(self.mu_bias), len(self.hidden_bias)]
        dims += [self.n_items, len(self.item), len(self.action), len(self.platform), len(self.gap)]
        return params, layout, np.array(dims, np.int64)

    def __call__(
        self, inputs: dict[str, NDArray[Any]]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Logits (B, n_items), latent means (B, L) and pooling weights (B, T) of encoder inputs
        (:meth:`training.data.Vocab.encode_sequences`), as :func:`training.trainer.infer` gives."""
        items = inputs["items"]
        b, t = items.shape
        buckets = gap_buckets(inputs["gaps"])
        bags = inputs.get("bag")
        logits = np.empty((b, self.n_items), np.float32)
        mu = np.empty((b, len(self.mu_bias)), np.float32)
        attention = np.zeros((b, t), np.float32)
        native = kernels()
        for r in range(b):
            events = np.flatnonzero(items[r] != PAD)
            bag = items[r] if bags is None else bags[r]
            present = bag[(bag != PAD) & (bag != UNKNOWN)]
            person = (
                items[r, events],
                inputs["actions"][r, events],
                inputs["platforms"][r, events],
                buckets[r, events],
            )
            if native is None:
                attention[r, events] = self._person(*person, present, logits[r], mu[r])
                continue
            weights = np.empty(len(events), np.float32)
            params, layout, dims = self._packed
            columns = [np.ascontiguousarray(a, np.int64) for a in (*person, present)]
            native.vae_person(params, layout, dims, *columns, logits[r], mu[r], weights)
            attention[r, events] = weights
        return logits, mu, attention

    def _person(
        self,
        items: NDArray[np.int64],
        actions: NDArray[np.int64],
        platforms: NDArray[np.int64],
        buckets: NDArray[np.int64],
        present: NDArray[np.int64],
        logits: NDArray[np.float32],
        mu: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """One person's pass in numpy: fills ``logits`` and ``mu``, returns the pooling weights
        of its events (no padding; ``present``: the bag's items, without padding or unknown)."""
        pooled = np.zeros(self.d_model, np.float32)  # no event: pooled to zeros, as the module does
        weights = np.zeros(0, np.float32)
        if len(items):
            x = self.item[items] + self.action[actions] + self.platform[platforms] + self.gap[buckets]
            x = _layer_norm(x, *self.embed_norm)
            for layer in self.layers:
                x = layer(x)
            scores = ((x @ self.key + self.key_bias) * self.query).sum(axis=-1) / np.float32(math.sqrt(self.d_model))
            weights = _softmax(scores)
            pooled = weights @ x
        if self.bag is not None:
            summed = self.bag[present].sum(axis=0) / np.float32(math.sqrt(max(len(present), 1)))
            pooled = np.concatenate([pooled, np.tanh(summed)])
        mu[:] = pooled @ self.mu + self.mu_bias
        logits[:] = np.tanh(mu @ self.hidden + self.hidden_bias) @ self.logits + self.logits_bias
        return weights
