"""The shortlist output layer (model.GPTConfig.shortlist_size, train_mps.Recipe.shortlist): a proper
distribution over the whole vocabulary, checked against a direct construction written out here."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import train_mps
from model import GPT, GPTConfig

V, K, EPS = 64, 40, 0.05
TINY = dict(block_size=16, vocab_size=V, n_layer=2, n_head=2, n_embd=16, bias=False)


def shortlist_model(seed=0, ids=None, dtype=torch.float64, **overrides):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, "shortlist_size": K, "unseen_mass": EPS, **overrides})).to(dtype)
    ids = torch.randperm(V, generator=torch.Generator().manual_seed(seed))[:K] if ids is None else ids
    return model.set_shortlist(ids), ids


def direct_log_probs(model, ids, idx):
    """(b, t, V) log-probabilities built from the definition: the hidden state through the tied
    embedding rows of the shortlist, then the tail mass spread evenly over the other tokens."""
    t = model.transformer
    row = {int(tok): r for r, tok in enumerate(ids)}
    rows = torch.tensor([[row.get(int(tok), K) for tok in seq] for seq in idx])
    x = t.wte.weight[rows] + t.wpe.weight[: idx.shape[1]]
    x = t.ln_f(model.integrate(x))
    p_short = torch.softmax(x @ t.wte.weight[:K].T, dim=-1) * (1 - EPS)  # (b, t, K)
    p = torch.full((*idx.shape, V), EPS / (V - K), dtype=x.dtype)
    for r, tok in enumerate(ids):
        p[..., int(tok)] = p_short[..., r]
    return p.log()


def batch(seed=1, b=3, t=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (b, t), generator=g), torch.randint(0, V, (b, t), generator=g)


def test_loss_and_inference_match_the_direct_distribution():
    model, ids = shortlist_model()
    idx, targets = batch()
    outside = ~torch.isin(targets, ids)
    assert outside.any() and (~outside).any() and (~torch.isin(idx, ids)).any()  # both kinds, as inputs too
    targets[0, :3] = -1  # ignored, as F.cross_entropy's ignore_index=-1
    with torch.no_grad():
        expected = direct_log_probs(model, ids, idx)
        logits, loss = model(idx, targets)
        last, none = model(idx)
    assert none is None
    shift = math.log1p(-EPS)  # full_logits: the log-probabilities minus log P(shortlist), one constant for all
    assert torch.allclose(logits, expected - shift, rtol=0, atol=1e-12)  # nanoGPT's (b, t, vocab) logits
    assert torch.allclose(F.log_softmax(logits, -1), expected, rtol=0, atol=1e-12)  # whose softmax is the model
    ref = F.nll_loss(expected.view(-1, V), targets.view(-1), ignore_index=-1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    # nanoGPT's identity, which code written against it relies on: the loss is the logits' cross-entropy
    ce = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-12)
    assert torch.allclose(last, expected[:, -1:] - shift, rtol=0, atol=1e-12)
    assert torch.allclose(F.softmax(last, -1).sum(-1), torch.ones(3, 1, dtype=last.dtype), atol=1e-12)


def test_a_target_outside_the_shortlist_costs_the_good_turing_share():
    model, ids = shortlist_model()
    idx, _ = batch()
    tok = next(t for t in range(V) if t not in set(ids.tolist()))
    with torch.no_grad():
        _, loss = model(idx, torch.full_like(idx, tok))
    assert loss.item() == pytest.approx(-math.log(EPS / (V - K)), rel=1e-12)


def test_gradients_match_the_direct_distribution():
    model, ids = shortlist_model()
    idx, targets = batch()
    _, loss = model(idx, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = F.nll_loss(direct_log_probs(model, ids, idx).view(-1, V), targets.view(-1))
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)


def test_the_shortlist_travels_with_the_state_dict():
    model, ids = shortlist_model(seed=0)
    fresh = GPT(model.config).to(torch.float64)  # default shortlist: tokens 0..K-1
    idx, targets = batch()
    with torch.no_grad():
        assert fresh(idx, targets)[1].item() != pytest.approx(model(idx, targets)[1].item())
        fresh.load_state_dict(model.state_dict())
        assert fresh(idx, targets)[1].item() == model(idx, targets)[1].item()
    assert torch.equal(fresh.row_tokens, ids)


def test_the_embedding_has_one_row_per_shortlisted_token_plus_one_shared():
    model, _ = shortlist_model()
    assert model.transformer.wte.weight.shape == (K + 1, 16)
    assert model.transformer.wte.weight is model.lm_head.weight  # tied
    full = GPT(GPTConfig(**TINY))
    assert full.transformer.wte.weight.shape == (V, 16) and not hasattr(full, "row_tokens")


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(shortlist_size=V), "shortlist_size must be 0"),
        (dict(shortlist_size=-1), "shortlist_size must be 0"),
        (dict(shortlist_size=K, unseen_mass=0.0), "0 < unseen_mass < 1"),
        (dict(shortlist_size=K, unseen_mass=1.0), "0 < unseen_mass < 1"),
        (dict(unseen_mass=0.1), "set shortlist_size > 0"),
    ],
)
def test_config_rejects_a_bad_shortlist(overrides, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**TINY, **overrides})


@pytest.mark.parametrize(
    "ids, match",
    [
        (torch.arange(K - 1), f"got {K - 1} token ids"),
        (torch.cat([torch.arange(K - 1), torch.tensor([0])]), "distinct"),
        (torch.cat([torch.arange(K - 1), torch.tensor([V])]), r"\[0, 64\)"),
    ],
)
def test_set_shortlist_rejects_bad_ids(ids, match):
    model = GPT(GPTConfig(**TINY, shortlist_size=K, unseen_mass=EPS))
    with pytest.raises(ValueError, match=match):
        model.set_shortlist(ids)
    with pytest.raises(ValueError, match="full softmax"):
        GPT(GPTConfig(**TINY)).set_shortlist(torch.arange(K))


# --- train_mps: the shortlist from the training split ------------------------------------------


def test_train_vocabulary_is_the_seen_tokens_and_good_turing_mass():
    tokens = np.array([5, 5, 7, 9, 9, 9, 11, 3], dtype=np.uint16)  # seen once: 7, 11, 3
    ids, mass = train_mps.train_vocabulary(tokens, 16)
    assert ids.tolist() == [3, 5, 7, 9, 11]
    assert mass == pytest.approx(3 / 8)
    assert train_mps.train_vocabulary(np.array([1, 1, 2, 2]), 16)[1] == pytest.approx(1 / 4)  # none once: 1/N
    assert train_mps.train_vocabulary(np.array([1, 2, 3, 4]), 16)[1] == pytest.approx(3 / 4)  # all once: 1-1/N
    with pytest.raises(train_mps.DataError, match="vocab_size"):
        train_mps.train_vocabulary(np.array([1, 20]), 16)


def test_model_config_needs_the_vocabulary_and_falls_back_to_the_full_softmax():
    r = train_mps.Recipe()
    assert r.shortlist  # canonical
    with pytest.raises(ValueError, match="train_vocabulary"):
        train_mps.model_config(r)
    every = (np.arange(r.vocab_size), 0.01)
    assert train_mps.model_config(r, every).shortlist_size == 0  # nothing to leave out
    some = (np.array([0, 10, 20]), 0.01)
    c = train_mps.model_config(r, some)
    assert (c.shortlist_size, c.unseen_mass) == (3, 0.01)


def test_make_model_takes_the_shortlist_from_the_tokens():
    tokens = np.array([9, 2, 2, 50000, 9, 31], dtype=np.uint16)
    model = train_mps.make_model(train_mps.Recipe(), tokens)
    assert model.row_tokens.tolist() == [2, 9, 31, 50000]
    assert model.token_rows[50000].item() == 3 and model.token_rows[1].item() == 4  # 4 = the shared row
    full = train_mps.make_model(train_mps.Recipe(shortlist=False), tokens)
    assert full.config.shortlist_size == 0


def test_full_split_loss_agrees_with_the_direct_distribution(monkeypatch):
    model, ids = shortlist_model()
    monkeypatch.setattr(train_mps, "block_size", 8)
    data = torch.randint(0, V, (8 * 5 + 1,), generator=torch.Generator().manual_seed(3))
    got = train_mps.full_split_loss(model, data, windows_per_batch=2)
    chunk = data[: 8 * 5 + 1]
    x, y = chunk[:-1].view(5, 8), chunk[1:].view(5, 8)
    with torch.no_grad():
        ref = F.nll_loss(direct_log_probs(model, ids, x).view(-1, V), y.reshape(-1))
    assert got == pytest.approx(ref.item(), rel=1e-6)
