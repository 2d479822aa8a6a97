"""levers.NgramTeacher, the interpolated Kneser-Ney trigram used as a soft target (LeverRecipe.ngram_distill).

Its sparse construction is checked against a direct computation of the formulas with Python counters, on toy data
with and without a row map (the shortlist's); the training step's loss against the mixture it claims to be."""

import copy
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import write_bins

import levers
import train_mps as tm
from parity_tests import tolerances as T

V = 20


def trigrams(tokens):
    return Counter(zip(tokens[:-2], tokens[1:-1], tokens[2:]))


def reference_distribution(tri, u, v, d2, d3):
    """p3(. | u v) over token ids, straight from the formulas in NgramTeacher's docstring, from the trigram counts
    `tri` (a Counter); u None: p2(. | v)."""
    tri = +tri  # the types with a positive count
    n_vw = Counter((b, c) for (_, b, c) in tri)  # N1+(. v w): distinct u before (v, w)
    n_w = Counter(c for (_, c) in n_vw)  # N1+(. w): distinct v before w

    def p1(w):
        return n_w.get(w, 0) / len(n_vw)

    def p2(w):
        s = sum(n for (b, _), n in n_vw.items() if b == v)
        if s == 0:
            return p1(w)
        succ = sum(1 for (b, _) in n_vw if b == v)
        return max(n_vw.get((v, w), 0) - d2, 0) / s + d2 * succ / s * p1(w)

    total = sum(n for (a, b, _), n in tri.items() if (a, b) == (u, v))
    if u is None or total == 0:
        return [p2(w) for w in range(V)]
    succ = sum(1 for (a, b, _) in tri if (a, b) == (u, v))
    return [max(tri.get((u, v, w), 0) - d3, 0) / total + d3 * succ / total * p2(w) for w in range(V)]


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 12, size=500)  # ids 12..19 never occur
    xb = torch.as_tensor(np.concatenate([tokens[:24], [3, 19, 3, 5, 19, 19, 4, 2]]).reshape(4, 8))  # unseen contexts
    return tokens, xb


def test_the_discounts_are_counts_of_counts():
    assert levers.NgramTeacher.discount(np.array([1, 1, 1, 2, 3])) == pytest.approx(3 / (3 + 2 * 1))


@pytest.mark.parametrize("shortlist", [False, True], ids=["token-ids", "shortlist-rows"])
def test_the_distribution_is_the_formulas(toy, shortlist):
    tokens, xb = toy
    if shortlist:  # the shortlist's map: tokens 0..11 in reverse order, every other id on the shared row 12
        rows = np.full(V, 12)
        rows[np.arange(12)] = np.arange(12)[::-1]
        teacher = levers.NgramTeacher(tokens, V, rows, 12)
    else:
        rows, teacher = np.arange(V), levers.NgramTeacher(tokens, V)
    got = teacher.target(xb)  # (P, n_rows)
    d2, d3 = teacher.discounts
    toks = tokens.tolist()
    for p, (i, j) in enumerate((i, j) for i in range(xb.size(0)) for j in range(xb.size(1))):
        u = int(xb[i, j - 1]) if j else None
        want = reference_distribution(trigrams(toks), u, int(xb[i, j]), d2, d3)
        assert sum(want) == pytest.approx(1.0)
        want_rows = np.zeros(teacher.n_rows)
        for w, pw in enumerate(want):
            if pw:
                want_rows[rows[w]] += pw
        assert np.allclose(got[p].numpy(), want_rows, rtol=0, atol=T.TEACHER), (i, j)


@pytest.mark.parametrize("shortlist", [False, True], ids=["token-ids", "shortlist-rows"])
def test_leave_one_out_is_the_formulas_on_the_counts_without_the_positions_own_trigram(shortlist):
    """Each position (u, v) -> y of a training batch is predicted from the split's trigram counts minus that one
    occurrence, the discounts kept; window starts (no u) keep the full counts."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 8, size=60)  # few types: contexts seen once, twice, many times, and types that vanish
    tokens[20:23] = [9, 10, 11]  # a trigram, its bigram (10, 11) and token 11 seen once: every level loses a type
    if shortlist:
        rows = np.full(V, 12)  # ids 12.. never occur: no row, as the shortlist's token_rows (row k)
        rows[np.arange(12)] = np.arange(12)[::-1]
        kw = dict(token_rows=rows, n_rows=12)
    else:
        rows, kw = np.arange(V), {}
    teacher = levers.NgramTeacher(tokens, V, leave_one_out=True, **kw)
    starts = list(range(0, 50, 2))  # overlapping windows: every trigram of the first 60 tokens, most twice
    xb = torch.as_tensor(np.stack([tokens[i : i + 10] for i in starts]))
    yb = torch.as_tensor(np.stack([tokens[i + 1 : i + 11] for i in starts]))
    yb[0, 5] = 19  # a target outside the counts (and the shortlist): nothing to take out, the full counts
    got = teacher.target(xb, yb)
    d2, d3 = teacher.discounts
    full = trigrams(tokens.tolist())
    vanished = 0
    for p, (i, j) in enumerate((i, j) for i in range(xb.size(0)) for j in range(xb.size(1))):
        u, v, y = (int(xb[i, j - 1]) if j else None), int(xb[i, j]), int(yb[i, j])
        counts = full - Counter({(u, v, y): 1}) if u is not None else full
        vanished += u is not None and full[(u, v, y)] == 1
        want = reference_distribution(counts, u, v, d2, d3)
        assert sum(want) == pytest.approx(1.0)
        want_rows = np.zeros(teacher.n_rows + 1)
        np.add.at(want_rows, rows, want)
        assert want_rows[teacher.n_rows] == 0  # the tokens without a row get no probability
        assert np.allclose(got[p].numpy(), want_rows[:-1], rtol=0, atol=T.TEACHER), (i, j)
    assert vanished > 0  # the data reach the case where a type leaves the continuation counts
    assert not torch.allclose(got, levers.NgramTeacher(tokens, V, **kw).target(xb))  # it is not the plain teacher
    with pytest.raises(ValueError, match="needs the targets"):
        teacher.target(xb)


def test_ngram_loo_without_a_teacher_is_refused():
    with pytest.raises(ValueError, match="ngram_distill=0"):
        levers.LeverRecipe(ngram_loo=True)
    with pytest.raises(ValueError, match="ngram_loo must be True or False"):
        levers.LeverRecipe(ngram_distill=0.3, ngram_loo=1)


def test_cross_entropy_is_the_teachers_expected_log_loss(toy):
    tokens, xb = toy
    teacher = levers.NgramTeacher(tokens, V)
    logp = torch.log_softmax(torch.randn(*xb.shape, V, generator=torch.Generator().manual_seed(1)), -1)
    want = -(teacher.target(xb) * logp.reshape(-1, V)).sum(1).mean()
    # float32, two orders of one sum of P * V terms of one sign (then / P): each within gamma(P * V + 1) of it
    assert teacher.cross_entropy(logp, xb).item() == pytest.approx(want.item(), rel=2 * T.gamma(xb.numel() * V + 1))
    own = teacher.target(xb).clamp_min(1e-12).log().reshape(*xb.shape, V)  # Gibbs: the teacher itself is the minimum
    assert teacher.cross_entropy(own, xb) < teacher.cross_entropy(logp, xb)


def test_too_little_data_and_uncovered_rows_are_clear_errors():
    with pytest.raises(tm.DataError, match="at least 3"):
        levers.NgramTeacher(np.array([1, 2]), V)
    with pytest.raises(ValueError, match="rows must cover"):
        levers.NgramTeacher(np.array([1, 2, 3, 4]), V, np.arange(V), 3)


def small_model(recipe, tokens, dtype=torch.float32):
    torch.manual_seed(0)
    return tm.make_model(recipe, tokens).to(dtype)


@pytest.mark.parametrize("loo", [False, True], ids=["counts", "leave-one-out"])
@pytest.mark.parametrize("shortlist", [True, False], ids=["shortlist", "full-softmax"])
def test_the_step_minimises_the_stated_mixture(shortlist, loo):
    """train_step's gradient is that of (1 - a) CE(targets) + a CE(teacher), computed here from the logits."""
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 400, size=4000)
    r = replace(
        levers.LeverRecipe(), ngram_distill=0.4, ngram_loo=loo, shortlist=shortlist, grad_clip=0.0, ema_decay=0.0
    )
    data = torch.from_numpy(tokens)
    xb, yb = tm.get_batch(data, torch.Generator().manual_seed(0))
    grads = []
    for use_train_step in (True, False):
        m = small_model(r, tokens, torch.float64)  # float64: the mixture's formula, not rounding, is under test
        teacher = levers.make_teacher(r, m, tokens, "cpu")
        opt = torch.optim.SGD(m.parameters(), lr=0.0)  # a step that moves nothing: the gradients stay to read
        if use_train_step:
            levers.train_step(m, [opt], list(m.parameters()), xb, yb, r, teacher)
            assert m.last_log_probs is None  # released: the model can be deep-copied again
            copy.deepcopy(m)
        else:
            logits, _ = m(xb, yb)
            logp = torch.log_softmax(logits, -1)  # (b, t, vocab)
            ce = torch.nn.functional.nll_loss(logp.view(-1, logp.size(-1)), yb.view(-1))
            if shortlist:
                logp = logp.index_select(-1, m.row_tokens)
            loss = (
                0.6 * ce + 0.4 * -(teacher.target(xb, yb, torch.float64) * logp.view(-1, logp.size(-1))).sum(1).mean()
            )
            loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_a_short_training_with_the_teacher_runs(tmp_path, monkeypatch):
    data = write_bins(tmp_path / "data")
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(data))
    monkeypatch.setenv("TRAIN_MPS_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "3")
    best, minutes = tm.train(replace(levers.LeverRecipe(), ngram_distill=0.3))
    assert np.isfinite(best) and np.isfinite(minutes)


def test_make_teacher_table_names_a_valid_teacher_recipe_on_both_corpora():
    """Issue #16: `make teacher-table` runs the teacher's spec (a real change of the recipe, leave-one-out on) beside
    the canonical on tinyshakespeare and on the offline corpus."""
    from conftest import makefile_text

    from odegpt_eval.specs import parse_config

    text = makefile_text()
    spec = next(line for line in text.splitlines() if line.startswith("TEACHER :=")).split(":=", 1)[1].strip()
    euler = next(line for line in text.splitlines() if line.startswith("EULER :=")).split(":=", 1)[1].strip()
    config = parse_config(spec, levers.LeverRecipe)
    assert config.overrides["ngram_loo"] is True and 0 < config.overrides["ngram_distill"] < 1
    base = parse_config(euler, levers.LeverRecipe).overrides
    extra = {
        k: v for k, v in config.overrides.items() if k not in base
    }  # what the teacher adds to the canonical of its time
    assert extra and all(getattr(levers.LeverRecipe(), k) != v for k, v in extra.items())
    assert spec.startswith(euler + ",")  # measured on the canonical of its time
    rule = " ".join(text.split("\nteacher-table:", 1)[1].split("\n\n", 1)[0].split())  # whitespace runs as one space
    for data in ("data/tinyshakespeare", "data/pypi"):
        assert (
            f"--configs {spec} {euler} --baseline {euler} --seeds $(TEACHER_SEEDS) --jobs 2 --data-dir {data}" in rule
        )


def test_teacher_fit_reports_the_leave_one_out_teacher_as_on_new_text(tmp_path):
    """scripts/teacher_fit.py: on a small vocabulary the counted teacher nearly knows each training target, the
    leave-one-out one predicts training text about as badly as val text; the JSON holds all three figures."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import teacher_fit

    data = write_bins(tmp_path / "data", n_train=6000, n_val=2000, vocab=40)
    out = tmp_path / "fit.json"
    assert teacher_fit.main(["--data-dir", str(data), "--batches", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    plain, loo, val = (
        res[k]["cross_entropy_where_positive"] for k in ("train_counts_as_they_are", "train_leave_one_out", "val")
    )
    assert plain < loo - 0.2 and abs(loo - val) < abs(plain - val)
    assert res["train_counts_as_they_are"]["zero_probability_share"] == 0
    assert teacher_fit.main(["--data-dir", str(tmp_path / "missing")]) == 2


def test_teacher_fit_compares_a_trained_student_with_the_teacher(tmp_path, monkeypatch):
    """--ckpt: the student's cross-entropy is its own loss on the same batches, and KL(teacher || student) is the
    teacher's cross-entropy against the student minus the teacher's entropy (computed here apart)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import teacher_fit
    from _study_common import load_checkpoint

    data = write_bins(tmp_path / "data", n_train=6000, n_val=2000, vocab=300)
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(data))
    monkeypatch.setenv("TRAIN_MPS_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "3")
    tm.train(levers.LeverRecipe())
    ckpt, out = tmp_path / "out" / "ckpt.pt", tmp_path / "fit.json"
    assert teacher_fit.main(["--data-dir", str(data), "--batches", "2", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    got = json.loads(out.read_text())["student"]["val_vs_counted_teacher"]
    model, _ = load_checkpoint(ckpt)
    train = np.fromfile(data / "train.bin", dtype=np.uint16)
    teacher = levers.NgramTeacher(train, 50304, model.token_rows.numpy(), model.config.shortlist_size)
    val = torch.from_numpy(np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64))
    gen, ce, kl = torch.Generator().manual_seed(0), 0.0, 0.0
    model.keep_log_probs = True
    for _ in range(2):
        xb, yb = tm.get_batch(val, gen)
        with torch.no_grad():
            ce += model(xb, yb)[1].item() / 2
        t = teacher.target(xb).double()
        entropy = -(t * t.clamp_min(1e-300).log()).sum(1).mean().item()
        cross = (
            -(t * model.last_log_probs.reshape(len(t), -1).double()).sum(1).mean().item()
        )  # in float64, as the script
        kl += (cross - entropy) / 2
    assert got["student_cross_entropy"] == ce  # the same forward on the same batches, halved exactly
    assert got["kl_teacher_student"] == pytest.approx(kl, rel=1e-9) and kl > 0  # float64 sums in two orders


def test_the_sparse_cross_entropy_and_its_gradient_are_the_dense_targets():
    """SparseTargetCrossEntropy against autograd through the dense target it stands for (float64), with keys that
    repeat (the trigram's and the bigram's entries of one row add) and log-probabilities that are not contiguous."""
    gen = torch.Generator().manual_seed(4)
    P, R = 6, 9
    logp = torch.log_softmax(torch.randn(R, P, dtype=torch.float64, generator=gen), 0).t()  # (P, R), a transpose
    logp.requires_grad_(True)
    g, n_w = torch.rand(P, dtype=torch.float64, generator=gen), torch.rand(R, dtype=torch.float64, generator=gen)
    keys = torch.tensor([0, 3, 3, 10, 53, 53, 53, 20])
    vals = torch.rand(len(keys), dtype=torch.float64, generator=gen)
    dense = torch.outer(g, n_w).reshape(-1).index_add(0, keys, vals).view(P, R)
    want = -(dense * logp).sum() / P
    got = levers.SparseTargetCrossEntropy.apply(logp, g, n_w, keys, vals)
    assert got.item() == pytest.approx(want.item(), rel=1e-14)
    (want_grad,) = torch.autograd.grad(3.0 * want, logp)
    (got_grad,) = torch.autograd.grad(3.0 * got, logp)
    assert torch.allclose(got_grad, want_grad, rtol=1e-14, atol=0)


def test_a_batch_of_uint16_tokens_is_read_as_the_same_ids():
    """train.bin's dtype: the teacher's keys (u * V + v) * V + y must not wrap at 2**16."""
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 50, size=400)
    teacher = levers.NgramTeacher(tokens, 50304, leave_one_out=True)
    xb, yb = tokens[None, 100:132], tokens[None, 101:133]
    want = teacher.target(torch.from_numpy(xb), torch.from_numpy(yb))
    got = teacher.target(xb.astype(np.uint16), yb.astype(np.uint16))
    assert torch.equal(got, want) and want[:, :50].sum(1).allclose(torch.ones(32))
