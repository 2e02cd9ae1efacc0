"""Heads, view aggregators and the model that joins them, all built by name.

A head maps features ``[..., D]`` to one logit ``[...]``. An aggregator maps per-view features
``[B, V, D]`` (and a head) to an image logit: feature-pooling aggregators (global, mean,
attention, gated-attention) pool first and apply the head once; logit-pooling aggregators
(max, topk) apply the head to every view and pool the logits. Every aggregator also returns
per-view logits and a pooled representation (for the gate and for failure features), and the
attention aggregators return their weights.
"""

from __future__ import annotations

import torch
from torch import nn

from natix.heads.config import POLICIES
from natix.heads.registry import AGGREGATORS, HEADS, register_aggregator, register_head

# --------------------------------------------------------------------------- heads


@register_head("linear")
class LinearHead(nn.Module):
    """One logit from a linear map (a linear probe: no dropout, weight decay regularises)."""

    def __init__(self, *, in_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)

    def forward(self, x):
        return self.fc(x).squeeze(-1)


@register_head("mlp")
class MLPHead(nn.Module):
    """`depth` hidden layers of `hidden` units (GELU, optional LayerNorm, dropout), then a logit."""

    def __init__(self, *, in_dim: int, hidden: int = 256, depth: int = 1, dropout: float = 0.1,
                 norm: str = "layer"):
        super().__init__()
        if norm not in ("layer", "none"):
            raise ValueError(f"unknown norm '{norm}': use layer or none")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden)]
            if norm == "layer":
                layers += [nn.LayerNorm(hidden)]
            layers += [nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers += [nn.Linear(width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).squeeze(-1)


# --------------------------------------------------------------------------- aggregators


def _masked_mean(x, mask):
    """Mean over views of ``[B, V, D]`` counting only kept views (mask ``[B, V]`` bool)."""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class Aggregator(nn.Module):
    """Returns ``(logit [B], view_logits [B, V] | None, pooled [B, D], attention [B, V] | None)``.

    `view_logits=False` lets pooling aggregators skip the per-view head (training speed).
    """

    def __init__(self):
        super().__init__()

    def forward(self, x, head, mask=None, view_logits=True):  # pragma: no cover - interface
        raise TypeError("use a registered aggregator")


class FeaturePool(Aggregator):
    """Pools the view features (`pool`), then applies the head once to the pooled row."""

    def pool(self, x, mask):  # pragma: no cover - interface
        """``(pooled [B, D], attention [B, V] | None)``."""
        raise TypeError("use a registered aggregator")

    def forward(self, x, head, mask=None, view_logits=True):
        pooled, attention = self.pool(x, mask)
        return head(pooled), head(x) if view_logits else None, pooled, attention


@register_aggregator("global")
class GlobalView(FeaturePool):
    """The global view (view 0) alone."""

    def pool(self, x, mask):
        return x[:, 0], None


@register_aggregator("mean")
class MeanPool(FeaturePool):
    """Mean of the view features, then the head."""

    def pool(self, x, mask):
        return _masked_mean(x, mask), None


@register_aggregator("max")
class MaxPool(Aggregator):
    """The most positive per-view logit (multiple-instance max)."""

    def forward(self, x, head, mask=None, view_logits=True):
        view_logits = head(x)
        masked = view_logits if mask is None else view_logits.masked_fill(~mask, float("-inf"))
        return masked.max(dim=1).values, view_logits, _masked_mean(x, mask), None


@register_aggregator("topk")
class TopKPool(Aggregator):
    """Mean of the `k` most positive per-view logits."""

    def __init__(self, *, k: int = 2):
        super().__init__()
        if k < 1:
            raise ValueError(f"topk needs k >= 1, got {k}")
        self.k = k

    def forward(self, x, head, mask=None, view_logits=True):
        view_logits = head(x)
        k = min(self.k, x.shape[1])
        if mask is None:
            top = view_logits.topk(k, dim=1).values
            return top.mean(dim=1), view_logits, x.mean(dim=1), None
        masked = view_logits.masked_fill(~mask, float("-inf"))
        top = masked.topk(k, dim=1).values
        valid = torch.isfinite(top)
        logit = torch.where(valid, top, torch.zeros_like(top)).sum(1) / valid.sum(1).clamp_min(1)
        return logit, view_logits, _masked_mean(x, mask), None


@register_aggregator("attention")
class AttentionPool(FeaturePool):
    """Attention MIL (Ilse et al. 2018): ``a = softmax_v(wᵀ tanh(V h_v))``, pooled = Σ a_v h_v."""

    gated = False

    def __init__(self, *, dim: int, attn_hidden: int = 128):
        super().__init__()
        self.V = nn.Linear(dim, attn_hidden)
        self.U = nn.Linear(dim, attn_hidden) if self.gated else None
        self.w = nn.Linear(attn_hidden, 1, bias=False)

    def weights(self, x, mask=None):
        """Attention weights ``[B, V]`` (rows sum to one over kept views)."""
        h = torch.tanh(self.V(x))
        if self.U is not None:
            h = h * torch.sigmoid(self.U(x))
        scores = self.w(h).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)

    def pool(self, x, mask):
        a = self.weights(x, mask)
        return torch.einsum("bv,bvd->bd", a, x), a


@register_aggregator("gated-attention")
class GatedAttentionPool(AttentionPool):
    """Gated attention MIL: ``a = softmax_v(wᵀ (tanh(V h_v) ⊙ sigmoid(U h_v)))``."""

    gated = True


# --------------------------------------------------------------------------- the model


class ViewModel(nn.Module):
    """Standardise → (view embedding) → aggregator + head (+ gate outputs).

    `forward(x [B, V, D], mask=None)` returns a dict with ``logit [B]``, ``view_logits [B, V]``,
    ``attention [B, V]`` (or None) and, for the gate policy, ``gate [B]`` (selection g in
    (0, 1)) and ``aux_logit [B]`` (the auxiliary head h).
    """

    def __init__(self, *, dim: int, n_views: int, head: str = "linear", agg: str = "mean",
                 policy: str = "softmax", view_embedding: bool = False, head_kwargs: dict | None = None,
                 agg_kwargs: dict | None = None):
        super().__init__()
        if policy not in POLICIES:
            from natix.errors import ConfigError

            raise ConfigError(f"unknown policy '{policy}': pass one of {', '.join(POLICIES)}")
        head_kwargs = dict(head_kwargs or {})
        self.policy = policy
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sigma", torch.ones(dim))
        self.view_embed = nn.Parameter(torch.zeros(n_views, dim)) if view_embedding else None
        self.agg = AGGREGATORS.create(agg, dim=dim, **(agg_kwargs or {}))
        self.head = HEADS.create(head, in_dim=dim, **head_kwargs)
        if policy == "gate":
            self.selector = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, 1))
            self.aux = HEADS.create(head, in_dim=dim, **head_kwargs)

    def set_standardisation(self, mu, sigma) -> None:
        """Per-dimension mean and std of the training features (over rows and views)."""
        self.mu.copy_(torch.as_tensor(mu, dtype=self.mu.dtype))
        self.sigma.copy_(torch.as_tensor(sigma, dtype=self.sigma.dtype).clamp_min(1e-6))

    def forward(self, x, mask=None, *, standardised: bool = False, view_logits: bool | None = None):
        """`standardised`: `x` was already standardised with ``mu``/``sigma`` (training copies).

        `view_logits`: compute per-view logits (an output for inspection; default: when not
        training). Pooling aggregators skip the per-view head without them.
        """
        if not standardised:
            x = (x - self.mu) / self.sigma
        if self.view_embed is not None:
            x = x + self.view_embed[: x.shape[1]]
        want = not self.training if view_logits is None else view_logits
        logit, view_logits, pooled, attention = self.agg(x, self.head, mask, view_logits=want)
        out = {"logit": logit, "view_logits": view_logits, "attention": attention}
        if self.policy == "gate":
            out["gate"] = torch.sigmoid(self.selector(pooled).squeeze(-1))
            out["aux_logit"] = self.aux(pooled)
        return out
