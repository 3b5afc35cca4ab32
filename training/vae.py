"""Attention-VAE for interest modelling: a set/sequence encoder with self-attention in front
of a Mult-VAE decoder.

Each event of a person (item, action, platform, time gap before the person's last event) is
embedded; a Transformer encoder without positional encodings mixes them, and an attention
pooling with a learned query reduces them to one vector. Without positions the encoder is a
function of the *set* of events: permutation-invariant, and when time is unknown (all gaps
0) nothing but the set is seen. The pooled vector gives the mean and log-variance of a
Gaussian posterior q(z|x); z is drawn by reparameterisation; the decoder maps z to logits of a
multinomial over all items.

The sequence holds the last T events only; a bag branch (``d_bag > 0``) sees every item the
person has interacted with (the ``seen_items`` feature): the L2-normalised multi-hot through a
linear layer and tanh, Mult-VAE's own encoder (Liang et al. 2018), concatenated with the pooled
vector. It is a function of the set too.

Loss: the negative ELBO with the KL term weighted by beta (annealed from 0),

    -E_q[log p(x|z)] + beta * KL(q(z|x) || N(0, I)),

where log p(x|z) = sum_i x_i log softmax(decoder(z))_i (Kingma & Welling 2013; Liang et al.
2018, "Variational Autoencoders for Collaborative Filtering"). beta = 1 is the ELBO proper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD = 0  # index 0 of every vocabulary is padding
UNKNOWN = 1  # index 1 is "not seen in training"
GAP_BUCKETS = 24


@dataclass(frozen=True)
class VAEConfig:
    n_items: int  # decoder outputs (items in the vocabulary, without pad/unknown)
    n_actions: int
    n_platforms: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 1
    d_latent: int = 64
    d_hidden: int = 256
    dropout: float = 0.2
    input_dropout: float = 0.3  # share of events hidden from the encoder while training (denoising)
    d_bag: int = 0  # > 0: a Mult-VAE bag-of-items branch over every seen item, of this width
    bag_dropout: float = 0.5  # share of seen items hidden from the bag branch while training

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gap_bucket(gap_seconds: torch.Tensor) -> torch.Tensor:
    """Log-scale buckets of a time gap: 0 for "same moment" (and for unknown time), then
    doubling from one minute on."""
    minutes = gap_seconds.clamp(min=0) / 60.0
    return torch.clamp(torch.floor(torch.log2(1.0 + minutes)).long(), 0, GAP_BUCKETS - 1)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p, training=True)`` with its mask drawn by numpy: each element kept with
    probability 1 - p and scaled by 1 / (1 - p). torch's CPU dropout (``bernoulli_``) took 38%
    of a training step (about 10 ms per 800k elements on this machine; numpy's float32 draws
    about 2 ms). The numpy generator is seeded from torch's, so ``torch.manual_seed`` still
    decides every mask."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    seed = int(torch.randint(0, 2**62, (1,)))
    keep = np.random.default_rng(seed).random(tuple(x.shape), dtype=np.float32) >= np.float32(p)
    return x * torch.from_numpy(np.multiply(keep, np.float32(1.0 / (1.0 - p)), dtype=np.float32))


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` through :func:`dropout` (no parameters: state dicts are the same)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p) if self.training else input


class EncoderLayer(nn.TransformerEncoderLayer):
    """A pre-norm :class:`torch.nn.TransformerEncoderLayer` (same parameters, same state dict)
    whose dropouts, the attention weights' included, use :func:`dropout` while training. Out of
    training it is torch's layer, fast path and all. In training, the self-attention is written
    out (the product, the padding mask, softmax, dropout of the weights, the product with the
    values), what torch's ``scaled_dot_product_attention`` computes on the CPU."""

    def __init__(self, d_model: int, n_heads: int, d_feedforward: int, p: float) -> None:
        super().__init__(d_model, n_heads, d_feedforward, p, batch_first=True, norm_first=True)
        self.dropout, self.dropout1, self.dropout2 = Dropout(p), Dropout(p), Dropout(p)

    def _sa_block(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if not self.training or attn_mask is not None or is_causal:
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        attn = self.self_attn
        b, t, d = x.shape
        heads = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(b, t, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, d / H)
        scores = (q @ k.transpose(-2, -1)) * (d // heads) ** -0.5  # (B, H, T, T)
        if key_padding_mask is not None:  # additive (0 / -inf): the layer's forward made it so
            scores = scores + key_padding_mask.view(b, 1, 1, t)
        weights = dropout(torch.softmax(scores, dim=-1), attn.dropout)
        out = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.dropout1(attn.out_proj(out))


class EventEmbedding(nn.Module):
    """Sum of item, action, platform and time-gap embeddings."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        # Item ids are shifted by 2 in the encoder (pad, unknown) relative to decoder outputs.
        self.item = nn.Embedding(config.n_items + 2, config.d_model, padding_idx=PAD)
        self.action = nn.Embedding(config.n_actions + 1, config.d_model, padding_idx=PAD)
        self.platform = nn.Embedding(config.n_platforms + 2, config.d_model, padding_idx=PAD)
        self.gap = nn.Embedding(GAP_BUCKETS, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(
        self, items: torch.Tensor, actions: torch.Tensor, platforms: torch.Tensor, gaps: torch.Tensor
    ) -> torch.Tensor:
        # all inputs (B, T); gaps in seconds
        x = self.item(items) + self.action(actions) + self.platform(platforms) + self.gap(gap_bucket(gaps))
        return self.norm(x)  # (B, T, D)


class AttentionPool(nn.Module):
    """A learned query attends over the events; returns the pooled vector and the weights."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))
        self.key = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # h (B, T, D); mask (B, T) True where there is an event
        # A product and a sum over D, not ``@ self.query``: that matrix-vector product's
        # rounding depends on how many persons' events it sees at once, this one's does not
        # (the service encodes the requests in flight together, each as alone).
        scores = (self.key(h) * self.query).sum(dim=-1) / math.sqrt(h.shape[-1])  # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        empty = ~mask.any(dim=1, keepdim=True)  # persons with no events pool to zeros
        weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=1) * mask  # (B, T)
        return (weights.unsqueeze(-1) * h).sum(dim=1), weights  # (B, D), (B, T)


class AttentionVAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = EventEmbedding(config)
        # The bag branch sees every item the person interacted with (the sequence only the last
        # T events): the L2-normalised multi-hot through a linear layer, as Mult-VAE's encoder.
        self.bag = (
            nn.EmbeddingBag(config.n_items + 2, config.d_bag, mode="sum", padding_idx=PAD) if config.d_bag > 0 else None
        )
        d_pooled = config.d_model + max(0, config.d_bag)
        layer = EncoderLayer(config.d_model, config.n_heads, 2 * config.d_model, config.dropout)
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.pool = AttentionPool(config.d_model)
        self.to_mu = nn.Linear(d_pooled, config.d_latent)
        self.to_logvar = nn.Linear(d_pooled, config.d_latent)
        self.decoder = nn.Sequential(
            nn.Linear(config.d_latent, config.d_hidden),
            nn.Tanh(),
            Dropout(config.dropout),
            nn.Linear(config.d_hidden, config.n_items),
        )

    def encode(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        platforms: torch.Tensor,
        gaps: torch.Tensor,
        bag: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (B, L) and the pooling attention weights (B, T).
        ``bag`` (B, S): encoder indices of every seen item (0 = pad), for the bag branch; when
        absent, the sequence's items stand in for it."""
        mask = items != PAD  # (B, T)
        if self.training and self.config.input_dropout > 0:
            keep = torch.rand(mask.shape, device=mask.device) >= self.config.input_dropout
            mask = mask & keep
        x = self.embed(items, actions, platforms, gaps)  # (B, T, D)
        # Rows with no event at all would make attention NaN: let them see one padded slot.
        attend = mask.clone()
        attend[:, 0] |= ~mask.any(dim=1)
        h = self.encoder(x, src_key_padding_mask=~attend)  # (B, T, D)
        pooled, weights = self.pool(h, mask)  # (B, D), (B, T)
        if self.bag is not None:
            pooled = torch.cat([pooled, self._bag(items if bag is None else bag)], dim=1)
        return self.to_mu(pooled), self.to_logvar(pooled).clamp(-10, 10), weights

    def _bag(self, bag: torch.Tensor) -> torch.Tensor:
        """tanh(W · x / ||x||) for the multi-hot x of the items in ``bag`` (B, S; distinct items,
        as :meth:`Vocab.encode_bags` gives them), without padding and unknown items; items
        dropped at random while training (denoising, as Mult-DAE/VAE's input dropout)."""
        assert self.bag is not None
        present = (bag != PAD) & (bag != UNKNOWN)
        if self.training and self.config.bag_dropout > 0:
            present &= torch.rand(bag.shape, device=bag.device) >= self.config.bag_dropout
        norm = present.sum(dim=1, keepdim=True).clamp(min=1).float().sqrt()
        weights = present.float() / norm
        return torch.tanh(self.bag(torch.where(present, bag, PAD), per_sample_weights=weights))

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, n_items) logits

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, mean and log-variance of :meth:`encode`'s inputs (items, actions, platforms,
        gaps and, optionally, the bag)."""
        mu, logvar, _ = self.encode(*inputs)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over latent dimensions (>= 0)."""
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)


def vae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over the batch of ``-E_q[log p(x|z)] + beta * KL``; also returns both terms.

    ``x`` (B, n_items) holds the counts of the multinomial draw (here: 1 per item the person
    interacted with). The expectation over q is estimated with the one reparameterised draw
    that produced ``logits``.
    """
    nll = -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
    kl = kl_divergence(mu, logvar).mean()
    return nll + beta * kl, nll, kl
