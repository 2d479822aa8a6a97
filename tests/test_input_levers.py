"""Issue #16's model levers in levers.py: hashed n-gram input embeddings (LeverConfig.ngram_buckets), blank data
noising (LeverConfig.token_noise) and nonlinear output features (head_width); issue #35's mixture of softmaxes (mos).
Small models on random tokens; each property is checked against an independent computation or against the model
without the lever."""

import math

import pytest
import torch

import model
from levers import LeverConfig, LeverGPT

SMALL = dict(block_size=16, vocab_size=300, n_layer=2, n_head=2, n_embd=8, bias=False)
SHORTLIST = dict(shortlist_size=200, unseen_mass=0.01)


def lever_model(**kw) -> LeverGPT:
    torch.manual_seed(0)
    return LeverGPT(LeverConfig(**{**SMALL, **kw}))


def tokens(b=3, t=16, high=200, seed=1):
    return torch.randint(0, high, (b, t), generator=torch.Generator().manual_seed(seed))


INT64 = 2**64


def wrap(v: int) -> int:
    """v as a two's-complement int64 (torch's integer arithmetic wraps)."""
    return (v + 2**63) % INT64 - 2**63


def reference_rows(ids: list[int], k: int, base: int) -> list[list[int]]:
    """Per position, the wngram rows the hash should select, computed with Python integers: the bigram's and
    trigram's ids in base `base`, Knuth's multiplicative hash (int64 wrap), high bits folded in, mod k."""
    out = []
    for p in range(len(ids)):
        rows = []
        for order in (2, 3):
            if p + 1 >= order:
                key = 0
                for tok in ids[p + 1 - order : p + 1]:
                    key = key * base + tok
                h = wrap(key * 0x9E3779B1)
                rows.append(((h ^ (h >> 29)) % k) + (order - 2) * k)
        out.append(rows)
    return out


@pytest.mark.parametrize("k", [7, 64, 1000])
def test_ngram_rows_are_the_hash_of_the_bigram_and_trigram(k):
    m = lever_model(ngram_buckets=k)
    with torch.no_grad():
        m.transformer.wngram.weight.copy_(torch.arange(2 * k).float()[:, None].expand(2 * k, SMALL["n_embd"]))
        # a table whose row r is the constant r, summed over the rows each position selects
        m.transformer.wngram.weight[:, 1:] = 1.0  # column 1+: how many rows were added
        ids = tokens()
        got = m.ngram_embedding(ids)  # (b, t, C)
    for b in range(ids.size(0)):
        want = reference_rows(ids[b].tolist(), k, SMALL["vocab_size"] + 1)
        assert got[b, :, 0].tolist() == [float(sum(r)) for r in want]
        assert got[b, :, 1].tolist() == [float(len(r)) for r in want]  # 0, 1, then 2 rows: no n-gram across the window
        assert all(0 <= r < 2 * k for rows in want for r in rows)


def test_a_zero_table_is_the_model_without_it():
    """Zero-initialised: training starts from the plain model, same outputs for the same other weights."""
    plain, with_ngrams = lever_model(**SHORTLIST), lever_model(**SHORTLIST, ngram_buckets=50)
    assert torch.count_nonzero(with_ngrams.transformer.wngram.weight) == 0
    missing, unexpected = with_ngrams.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["transformer.wngram.weight"] and unexpected == []
    ids = tokens()
    with torch.no_grad():
        assert torch.equal(plain(ids, ids)[0], with_ngrams(ids, ids)[0])


def test_ngram_embeddings_are_causal():
    m = lever_model(**SHORTLIST, ngram_buckets=50).eval()
    with torch.no_grad():
        m.transformer.wngram.weight.normal_()
        ids = tokens()
        changed = ids.clone()
        changed[:, 9:] = (changed[:, 9:] + 1) % 200
        a, _ = m(ids, ids)
        b, _ = m(changed, changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.equal(a[:, 9:], b[:, 9:])


def test_the_table_learns():
    m = lever_model(**SHORTLIST, ngram_buckets=50)
    ids = tokens()
    _, loss = m(ids, ids)
    loss.backward()
    assert torch.count_nonzero(m.transformer.wngram.weight.grad) > 0


@pytest.mark.parametrize("shortlist", [True, False], ids=["shortlist", "full-softmax"])
def test_token_noise_blanks_inputs_in_training_only(shortlist):
    kw = SHORTLIST if shortlist else {}
    noisy, clean = lever_model(**kw, token_noise=0.5), lever_model(**kw)
    ids = tokens(b=8)
    with torch.no_grad():
        noisy.eval(), clean.eval()
        assert torch.equal(noisy(ids, ids)[0], clean(ids, ids)[0])  # evaluation never noises
        noisy.train(), clean.train()
        e_noisy, e_clean = noisy.embed(ids), clean.embed(ids)
    differs = (e_noisy != e_clean).any(-1).float().mean().item()
    assert 0.35 < differs < 0.65  # about half of the positions blanked
    if shortlist:  # a blank is the shared row of the tokens outside the shortlist
        blank = noisy.transformer.wte.weight[SHORTLIST["shortlist_size"]]
        pos = noisy.transformer.wpe.weight[: ids.size(1)]
        hit = (e_noisy != e_clean).any(-1)  # (b, t)
        assert torch.equal(e_noisy[hit], (blank + pos.expand(ids.size(0), -1, -1)[hit]))  # the same one add


def test_token_noise_leaves_the_targets_alone():
    """The loss is still the cross-entropy of the given targets: at noise ~1 every input is a blank, and the loss
    equals that of a model fed blanks explicitly."""
    noisy = lever_model(**SHORTLIST, token_noise=0.999999).train()
    clean = lever_model(**SHORTLIST).train()
    ids = tokens()
    blank_token = 250  # outside the shortlist (tokens 0..199): the shared row
    torch.manual_seed(3)
    _, a = noisy(ids, ids)
    _, b = clean(torch.full_like(ids, blank_token), ids)
    assert torch.equal(a, b)  # the same rows through the same ops


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ngram_buckets", -1),
        ("ngram_buckets", 2.0),
        ("ngram_buckets", True),
        ("token_noise", 1.0),
        ("token_noise", -0.1),
        ("token_noise", float("nan")),
    ],
)
def test_bad_values_are_refused_at_construction(field, value):
    with pytest.raises(ValueError, match=field):
        LeverConfig(**{**SMALL, field: value})


# --- head_width: nonlinear output features beside the tied logits ------------------------------------------------


@pytest.mark.parametrize("kw", [SHORTLIST, {}], ids=["shortlist", "full-softmax"])
def test_a_zero_wide_table_is_the_tied_output_layer(kw):
    plain, wide = lever_model(**kw), lever_model(**kw, head_width=12)
    assert torch.count_nonzero(wide.head_wide.weight) == 0
    missing, _ = wide.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["head_up.weight", "head_wide.weight"]
    ids = tokens()
    with torch.no_grad():
        assert torch.equal(plain(ids, ids)[0], wide(ids, ids)[0])  # + U gelu(A h) with U = 0 adds exact zeros
        assert torch.equal(plain(ids)[0], wide(ids)[0])


@pytest.mark.parametrize("kw", [SHORTLIST, {}], ids=["shortlist", "full-softmax"])
def test_wide_logits_are_the_formula_and_the_loss_their_cross_entropy(kw):
    m = lever_model(**kw, head_width=12).double().eval()  # float64: a formula, not rounding, is under test
    with torch.no_grad():
        m.head_wide.weight.normal_()
        ids = tokens()
        logits, loss = m(ids, ids)
        h = m.transformer.ln_f(m.integrate(m.embed(ids)))  # (b, t, C)
        raw = h @ m.lm_head.weight.T + torch.nn.functional.gelu(h @ m.head_up.weight.T) @ m.head_wide.weight.T
    if kw:  # shortlist: the logits are log-probabilities less log(1 - unseen_mass), the same constant everywhere
        k = kw["shortlist_size"]
        want = torch.log_softmax(raw[..., :k], -1)
        full = torch.log_softmax(logits, -1)[..., m.row_tokens]  # the model's log-probabilities
        assert torch.allclose(full, want + math.log1p(-kw["unseen_mass"]), rtol=0, atol=1e-12)
        assert torch.allclose(logits[..., m.row_tokens], want, rtol=0, atol=1e-12)
    else:
        assert torch.allclose(logits, raw, rtol=0, atol=1e-12)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), ids.view(-1))
    assert torch.allclose(loss, ce, rtol=0, atol=1e-12)


def test_the_wide_features_lift_the_rank_of_the_log_probabilities():
    """Tied: log-probabilities over many contexts have rank <= n_embd + 1; with head_width they exceed it."""
    ids = tokens(b=16, t=16)
    ranks = {}
    for w in (0, 24):
        m = lever_model(**SHORTLIST, head_width=w).eval()
        with torch.no_grad():
            if w:
                m.head_wide.weight.normal_()
            logp = m(ids, ids)[0][..., m.row_tokens].reshape(-1, SHORTLIST["shortlist_size"]).double()
        ranks[w] = torch.linalg.matrix_rank(logp, rtol=1e-5).item()
    assert ranks[0] <= SMALL["n_embd"] + 1 < ranks[24]


def test_bad_head_width_is_refused():
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="head_width"):
            LeverConfig(**{**SMALL, "head_width": bad})


# --- mos: the output layer as a mixture of softmaxes (issue #35) --------------------------------------------------


@pytest.mark.parametrize("width", [0, 12], ids=["mos", "mos+head_width"])
@pytest.mark.parametrize("kw", [SHORTLIST, {}], ids=["shortlist", "full-softmax"])
def test_mixture_probabilities_are_the_weighted_softmaxes(kw, width):
    """The model's probabilities are sum_k pi_k softmax(E tanh(P_k h) + features), summed in probability space here
    (the model takes logsumexp of log-probabilities), over the shortlist's rows times 1 - unseen_mass."""
    m = lever_model(**kw, mos=3, head_width=width).double().eval()
    with torch.no_grad():
        if width:
            m.head_wide.weight.normal_()
        ids = tokens()
        logits, loss = m(ids, ids)
        h = m.transformer.ln_f(m.integrate(m.embed(ids)))  # (b, t, C)
        k = kw.get("shortlist_size", SMALL["vocab_size"])
        features = torch.nn.functional.gelu(h @ m.head_up.weight.T) @ m.head_wide.weight[:k].T if width else 0
        prior = torch.softmax(h @ m.head_prior.weight.T, -1)  # (b, t, 3)
        want = sum(
            prior[..., j, None] * torch.softmax(torch.tanh(h @ p.T) @ m.lm_head.weight[:k].T + features, -1)
            for j, p in enumerate(m.head_mix.weight.view(3, SMALL["n_embd"], SMALL["n_embd"]))
        )  # (b, t, k)
    probs = torch.softmax(logits, -1)
    if kw:
        want = want * (1 - kw["unseen_mass"])
        probs = probs[..., m.row_tokens]
    assert torch.allclose(probs, want, rtol=0, atol=1e-12)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), ids.view(-1))
    assert torch.allclose(loss, ce, rtol=0, atol=1e-12)


def test_mixture_components_start_as_the_identity_and_lift_the_rank():
    """Each P_k starts as the identity plus N(0, 0.02) noise; the mixture's log-probabilities over many contexts
    exceed the tied layer's rank bound n_embd + 1."""
    m = lever_model(**SHORTLIST, mos=3).eval()
    C = SMALL["n_embd"]
    noise = m.head_mix.weight.view(3, C, C) - torch.eye(C)
    assert 0 < noise.std().item() < 0.04 and noise.abs().max().item() < 0.2
    ids = tokens(b=16, t=16)
    with torch.no_grad():
        m.head_mix.weight.normal_()  # components far apart: a mixture, not one softmax thrice
        m.head_prior.weight.normal_()
        logp = m(ids, ids)[0][..., m.row_tokens].reshape(-1, SHORTLIST["shortlist_size"]).double()
    assert torch.linalg.matrix_rank(logp, rtol=1e-5).item() > C + 1


def test_bad_mos_is_refused():
    for bad in (-1, 1, 2.0, True):
        with pytest.raises(ValueError, match="mos must be"):
            LeverConfig(**{**SMALL, "mos": bad})


@pytest.mark.parametrize("kw", [{}, SHORTLIST], ids=["full-softmax", "shortlist"])
def test_with_its_levers_off_a_lever_model_is_model_py_s(kw):
    """LeverGPT adds its modules through GPT.add_modules: with every lever off it draws the same weights and computes
    the same losses and gradients as model.GPT, bit for bit, in training (dropout, noise) and in evaluation."""
    torch.manual_seed(0)
    plain = model.GPT(model.GPTConfig(**{**SMALL, **kw}))
    lever = lever_model(**kw)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), lever.state_dict().values()))
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    for train in (True, False):
        outs = []
        for m in (plain, lever):
            m.train(train)
            m.zero_grad()
            logits, loss = m(idx, idx)
            loss.backward()
            outs.append((logits, loss, [p.grad.clone() for p in m.parameters()]))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
        assert all(torch.equal(a, b) for a, b in zip(outs[0][2], outs[1][2]))
