"""Heads, aggregators and ViewModel: every registered name × every aggregator × policy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import natix.heads.modules  # noqa: F401  (fills the registries)
from natix.errors import ConfigError
from natix.heads.modules import POLICIES, ViewModel
from natix.heads.registry import (
    AGGREGATORS,
    HEADS,
    Registry,
    create_aggregator,
    create_head,
    list_aggregators,
    list_heads,
)
from natix.heads.train import HeadConfig, training_loss

DIM = 16
ATTENTION = {"attention", "gated-attention"}
GRID = list(itertools.product(list_heads(), list_aggregators(), POLICIES))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _model(head, agg, policy="softmax", *, n_views=4, dropout=0.1, k=2, **kw):
    cfg = HeadConfig(head=head, agg=agg, policy=policy, hidden=8, dropout=dropout, k=k, attn_hidden=8, **kw)
    return cfg.build(DIM, n_views)


def _x(b=5, v=4, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((b, v, DIM)).astype(np.float32))


def test_registries_are_not_empty():
    assert {"linear", "mlp"} <= set(list_heads())
    assert {"global", "mean", "max", "topk", "attention", "gated-attention"} <= set(list_aggregators())


# --------------------------------------------------------------------------- shapes and values


@pytest.mark.parametrize("head,agg,policy", GRID)
def test_output_shapes_and_values(head, agg, policy):
    model = _model(head, agg, policy).eval()
    x = _x(b=5, v=4)
    with torch.no_grad():
        out = model(x)
    assert out["logit"].shape == (5,)
    assert out["view_logits"].shape == (5, 4)
    assert torch.isfinite(out["logit"]).all() and torch.isfinite(out["view_logits"]).all()
    if agg in ATTENTION:
        a = out["attention"]
        assert a.shape == (5, 4)
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(1), torch.ones(5))
    else:
        assert out["attention"] is None
    if policy == "gate":
        assert out["gate"].shape == (5,) and out["aux_logit"].shape == (5,)
        assert ((out["gate"] > 0) & (out["gate"] < 1)).all()
        assert torch.isfinite(out["aux_logit"]).all()
    else:
        assert "gate" not in out and "aux_logit" not in out


@pytest.mark.parametrize("head,agg,policy", GRID)
def test_gradients_reach_every_parameter(head, agg, policy):
    model = _model(head, agg, policy).train()
    x = _x(b=8, v=4)
    y = torch.tensor([0, 1] * 4, dtype=torch.float32)
    loss = training_loss(model(x), y, torch.ones(8), HeadConfig(head=head, agg=agg, policy=policy))
    loss.backward()
    params = dict(model.named_parameters())
    assert params
    for name, p in params.items():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets an all-zero gradient"
    # what the aggregator and the gate add really trains
    if agg in ATTENTION:
        assert any(n.startswith("agg.") for n in params)
    if policy == "gate":
        assert any(n.startswith("selector.") for n in params) and any(n.startswith("aux.") for n in params)


@pytest.mark.parametrize("head,agg,policy", GRID)
def test_training_mode_gives_the_same_logit(head, agg, policy):
    """Training mode skips per-view logits for pooling aggregators; the image logit must not change."""
    model = _model(head, agg, policy, dropout=0.0)
    x = _x()
    with torch.no_grad():
        train_logit = model.train()(x)["logit"]
        eval_out = model.eval()(x)
    torch.testing.assert_close(train_logit, eval_out["logit"])


@pytest.mark.parametrize("head,agg,policy", GRID)
def test_single_view(head, agg, policy):
    model = _model(head, agg, policy, n_views=1).eval()
    x = _x(b=3, v=1)
    with torch.no_grad():
        out = model(x)
    assert out["logit"].shape == (3,) and out["view_logits"].shape == (3, 1)
    # with one view every aggregator reduces to the head on that view
    torch.testing.assert_close(out["logit"], out["view_logits"][:, 0])
    if agg in ATTENTION:
        torch.testing.assert_close(out["attention"], torch.ones(3, 1))


def test_aggregator_semantics_with_a_linear_head():
    """With a linear head, each aggregator's logit is a known function of the per-view logits."""
    x = _x(b=6, v=5)
    with torch.no_grad():
        for agg, k in (("global", 2), ("mean", 2), ("max", 2), ("topk", 2), ("topk", 3), ("attention", 2),
                       ("gated-attention", 2)):
            out = _model("linear", agg, n_views=5, k=k).eval()(x)
            vl = out["view_logits"]
            expected = {
                "global": vl[:, 0],
                "mean": vl.mean(1),
                "max": vl.max(1).values,
                "topk": vl.topk(k, dim=1).values.mean(1),
            }.get(agg)
            if expected is None:  # attention: logit = head(sum a_v x_v) = sum a_v logit_v
                expected = (out["attention"] * vl).sum(1)
            torch.testing.assert_close(out["logit"], expected, msg=f"{agg} k={k}")


def test_topk_with_k_larger_than_views_is_the_mean():
    model = _model("mlp", "topk", n_views=3, k=7).eval()
    x = _x(b=4, v=3)
    with torch.no_grad():
        out = model(x)
        masked = model(x, torch.tensor([[True, False, True]] * 4))
    torch.testing.assert_close(out["logit"], out["view_logits"].mean(1))
    # k > kept views: the mean of the kept views' logits
    torch.testing.assert_close(masked["logit"], out["view_logits"][:, [0, 2]].mean(1))


# --------------------------------------------------------------------------- masks (view dropout)


@pytest.mark.parametrize("head,agg,policy", GRID)
def test_a_masked_view_cannot_change_the_output(head, agg, policy):
    model = _model(head, agg, policy).eval()
    x = _x(b=4, v=4)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:, 2] = False
    mask[1, 3] = False
    x2 = x.clone()
    x2[:, 2] += 50.0 * torch.randn(4, DIM)
    x2[1, 3] -= 30.0
    with torch.no_grad():
        a, b = model(x, mask), model(x2, mask)
    keys = ["logit"] + (["attention"] if agg in ATTENTION else []) + (["gate", "aux_logit"] if policy == "gate" else [])
    for key in keys:
        torch.testing.assert_close(a[key], b[key], msg=key)
    if agg in ATTENTION:
        assert (a["attention"][~mask] == 0).all()
        torch.testing.assert_close(a["attention"].sum(1), torch.ones(4))
    # the same perturbation on kept views does move the output (the check above can fail)
    if agg != "global":
        with torch.no_grad():
            c = model(x2)
        assert not torch.allclose(a["logit"], c["logit"])


@pytest.mark.parametrize("agg", ["mean", "max", "topk", "attention", "gated-attention"])
def test_mask_keeps_only_the_kept_views(agg):
    """A mask that keeps views {0, 1} gives the same logit as the model on those two views alone."""
    model = _model("mlp", agg, n_views=4, k=2).eval()
    x = _x(b=3, v=4)
    mask = torch.tensor([[True, True, False, False]] * 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask)["logit"], model(x[:, :2])["logit"])


# --------------------------------------------------------------------------- standardisation, embedding


@pytest.mark.parametrize("head,agg", list(itertools.product(list_heads(), list_aggregators())))
def test_standardisation_buffers_are_applied(head, agg):
    model = _model(head, agg).eval()
    x = _x()
    rng = np.random.default_rng(1)
    mu = rng.normal(size=DIM).astype(np.float32)
    sigma = rng.uniform(0.5, 3.0, size=DIM).astype(np.float32)
    with torch.no_grad():
        before = model(x)["logit"]
        model.set_standardisation(mu, sigma)
        after = model(x)["logit"]
        # standardising inside equals feeding pre-standardised features to the unstandardised model
        model.set_standardisation(np.zeros(DIM), np.ones(DIM))
        manual = model((x - torch.from_numpy(mu)) / torch.from_numpy(sigma))["logit"]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, manual)
    assert {"mu", "sigma"} <= set(model.state_dict())  # saved with the weights


def test_zero_std_is_clamped():
    model = _model("linear", "mean").eval()
    model.set_standardisation(np.zeros(DIM), np.zeros(DIM))
    assert float(model.sigma.min()) > 0
    with torch.no_grad():
        assert torch.isfinite(model(_x())["logit"]).all()


def test_view_embedding_trains_and_moves_the_output():
    model = _model("linear", "mean", view_embedding=True, dropout=0.0)
    assert model.view_embed.shape == (4, DIM)
    x = _x()
    with torch.no_grad():
        before = model.eval()(x)["logit"]
        model.view_embed.add_(torch.randn(4, DIM))
        after = model(x)["logit"]
    assert not torch.allclose(before, after)
    model.train()
    model(x)["logit"].sum().backward()
    assert model.view_embed.grad is not None and model.view_embed.grad.abs().sum() > 0


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("kwargs,names", [
    ({"head": "nope"}, list_heads()),
    ({"agg": "nope"}, list_aggregators()),
    ({"policy": "nope"}, list(POLICIES)),
])
def test_unknown_names_list_the_valid_ones(kwargs, names):
    with pytest.raises(ConfigError, match="unknown .*'nope'.*" + ", ".join(names)):
        ViewModel(dim=DIM, n_views=2, **kwargs)


@pytest.mark.parametrize("registry,names", [(HEADS, list_heads), (AGGREGATORS, list_aggregators)])
def test_registry_create_unknown(registry, names):
    with pytest.raises(ConfigError, match=", ".join(names())):
        registry.create("does-not-exist", dim=DIM, in_dim=DIM)


def test_duplicate_registration_raises():
    reg = Registry("widget")
    reg.register("a")(lambda *, x: x)
    with pytest.raises(ConfigError, match="widget 'a' is already registered"):
        reg.register("a")(lambda *, x: None)
    assert reg.names() == ["a"]
    n_heads = list_heads()
    with pytest.raises(ConfigError, match="already registered"):
        HEADS.register("linear")(nn.Identity)
    assert list_heads() == n_heads
    assert HEADS.create("linear", in_dim=3).__class__.__name__ == "LinearHead"  # the original survives


def test_registry_create_passes_kwargs():
    reg = Registry("widget")
    reg.register("b")(lambda *, x, y="y": {"x": x, "y": y})
    assert reg.create("b", x=1, y="z") == {"x": 1, "y": "z"}
    assert reg.arguments("b") == ("x", "y") and reg.supported("b", {"x": 2, "q": 3}) == {"x": 2}
    assert "b" in reg and "c" not in reg
    mlp = HEADS.create("mlp", in_dim=DIM, hidden=7, depth=2, norm="none", dropout=0.0)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(DIM, 7), (7, 7), (7, 1)]
    assert not any(isinstance(m, nn.LayerNorm) for m in mlp.modules())
    assert AGGREGATORS.create("topk", dim=DIM, k=5).k == 5
    attn = AGGREGATORS.create("gated-attention", dim=DIM, attn_hidden=11)
    assert attn.V.out_features == 11 and attn.U is not None
    assert AGGREGATORS.create("attention", dim=DIM).U is None


# --------------------------------------------------------------------------- strict constructor arguments


@pytest.mark.parametrize("name", list_heads())
def test_a_misspelt_head_argument_is_an_error(name):
    with pytest.raises(ConfigError, match=rf"^head '{name}' has no argument 'hiden': pass only in_dim"):
        create_head(name, in_dim=DIM, hiden=8)


@pytest.mark.parametrize("name", list_aggregators())
def test_a_misspelt_aggregator_argument_is_an_error(name):
    with pytest.raises(ConfigError, match=rf"^aggregator '{name}' has no argument 'kk': pass only dim"):
        create_aggregator(name, dim=DIM, kk=5)


def test_the_error_lists_the_valid_arguments():
    with pytest.raises(ConfigError, match="^aggregator 'topk' has no argument 'kk': pass only dim, k$"):
        create_aggregator("topk", dim=8, kk=5)
    with pytest.raises(ConfigError, match="pass only in_dim, hidden, depth, dropout, norm$"):
        create_head("mlp", in_dim=8, k=2)  # an aggregator's argument is not a head's
    # the shared width is accepted by every constructor, used by those that need it
    assert create_aggregator("global", dim=8) is not None and create_aggregator("topk", dim=8, k=5).k == 5


@pytest.mark.parametrize("registry", [HEADS, AGGREGATORS])
def test_a_constructor_taking_any_keyword_cannot_be_registered(registry):
    names = registry.names()
    with pytest.raises(ConfigError, match="takes \\*\\*kwargs: name the arguments"):
        registry.register("catch-all")(lambda **kwargs: None)
    assert registry.names() == names


@pytest.mark.parametrize("head,agg,policy", GRID)
@pytest.mark.parametrize("view_embedding", [False, True])
def test_every_head_config_builds(head, agg, policy, view_embedding):
    """Every config option reaches the constructors that take it and no other."""
    cfg = HeadConfig(head=head, agg=agg, policy=policy, view_embedding=view_embedding, hidden=6, depth=2,
                     dropout=0.0, norm="none", k=3, attn_hidden=5)
    model = cfg.build(DIM, 4)
    assert set(cfg.head_kwargs()) == ({"hidden", "depth", "dropout", "norm"} if head == "mlp" else set())
    assert cfg.agg_kwargs() == {"topk": {"k": 3}, "attention": {"attn_hidden": 5},
                                "gated-attention": {"attn_hidden": 5}}.get(agg, {})
    if head == "mlp":
        assert [m.out_features for m in model.head.modules() if isinstance(m, nn.Linear)] == [6, 6, 1]
    if agg == "topk":
        assert model.agg.k == 3
    if agg in ATTENTION:
        assert model.agg.V.out_features == 5
    with torch.no_grad():
        assert model.eval()(_x())["logit"].shape == (5,)
