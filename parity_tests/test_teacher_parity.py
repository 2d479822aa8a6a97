"""The n-gram distillation teacher (Recipe.ngram_distill, Recipe.ngram_loo) on both sides: jax_impl.teacher, written
apart from levers.NgramTeacher, gives its target; the JAX train step trains the same mixture as
levers.train_step; `python -m jax_impl.train --ngram-distill A --ngram-loo` trains with it and records both.

levers.NgramTeacher computes its target in float64 on the host and rounds it to the dtype asked for: its dense
target in float32 (the default) is compared at the float32 tolerance, in float64 at float64's; its cross-entropy runs
in the dtype of the log-probabilities it is given."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_impl
import levers
import train_mps
from jax_impl import optim as jax_optim
from jax_impl import teacher as jt
from jax_impl.train import TrainSteps
from jax_impl.train import train as jax_train
from parity_tests import harness as H
from parity_tests import test_train_jax
from parity_tests.tolerances import TEACHER, tol

tiny_data = test_train_jax.tiny_data  # the tiny train.bin / val.bin the other end-to-end tests train on

V = 20
# the shortlist's map of the toy data: tokens 0..11 in reverse order, every other id on the shared row 12
SHORTLIST_ROWS = np.concatenate([np.arange(12)[::-1], np.full(V - 12, 12)])


def toy_split():
    """Tokens with contexts seen once, twice and often, and one trigram whose bigram and last token occur once
    (leave-one-out takes a type out of every level); windows over them (every trigram, most twice) and two
    windows of contexts never seen, with targets not in the counts. Every target is a token of the shortlist's rows,
    as in training (levers.NgramTeacher's leave-one-out cannot take a target outside them: IndexError)."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 8, size=80)
    tokens[20:23] = [9, 10, 11]
    starts = range(0, 70, 2)
    xb = np.stack([tokens[i : i + 10] for i in starts] + [[3, 11, 3, 5, 9, 9, 4, 2, 10, 10], np.arange(10, 20)])
    yb = np.stack(
        [tokens[i + 1 : i + 11] for i in starts] + [[11, 3, 5, 9, 9, 4, 2, 10, 10, 1], np.arange(11, 21) % 12]
    )
    return tokens, xb, yb


@pytest.mark.parametrize("leave_one_out", [False, True], ids=["counts", "leave-one-out"])
@pytest.mark.parametrize("shortlist", [False, True], ids=["token-ids", "shortlist-rows"])
def test_the_teacher_target_is_torchs(shortlist, leave_one_out):
    tokens, xb, yb = toy_split()
    rows, n_rows = (SHORTLIST_ROWS, 12) if shortlist else (None, 0)
    counts = jt.fit_teacher(tokens, V, rows, n_rows)
    got = jt.teacher_target(counts, xb, yb, leave_one_out)  # (P, n_rows)
    shipped = levers.NgramTeacher(tokens, V, rows, n_rows, leave_one_out=leave_one_out)
    assert (counts.discount2, counts.discount3) == shipped.discounts
    want = shipped.target(torch.from_numpy(xb), torch.from_numpy(yb))
    assert got.shape == tuple(want.shape) == (xb.size, 12 if shortlist else V)
    assert H.max_abs(got, want) <= TEACHER  # the teacher as train_mps runs it, in float32
    want64 = shipped.target(torch.from_numpy(xb), torch.from_numpy(yb), torch.float64)
    assert H.max_abs(got, want64) <= tol("float64", "logits")
    assert np.all(got >= 0) and np.max(np.abs(got.sum(axis=1) - 1)) <= tol("float64", "logits")
    # the data reach every case: window starts (no u), contexts never seen, and (leave-one-out) types that go
    own = [(xb[i, j - 1], xb[i, j], yb[i, j]) for i in range(len(xb)) for j in range(1, xb.shape[1])]
    trigrams = list(zip(tokens[:-2], tokens[1:-1], tokens[2:]))
    assert sum(trigrams.count(k) == 1 for k in own) > 0 and sum(trigrams.count(k) == 0 for k in own) > 0
    if leave_one_out:  # it changes the target, and needs the targets
        assert H.max_abs(got, jt.teacher_target(counts, xb, yb)) > 0.1
        with pytest.raises(ValueError, match="needs the targets"):
            jt.teacher_target(counts, xb, None, leave_one_out=True)


def _training_split(vocab: np.ndarray, n: int = 600, seed: int = 0) -> np.ndarray:
    """n tokens of `vocab` (the ids a model's rows cover), most of them from its first 6: repeated trigrams
    beside ones seen once."""
    rng = np.random.default_rng(seed)
    common = rng.random(n) < 0.85
    return np.where(common, vocab[rng.integers(0, 6, n)], vocab[rng.integers(0, len(vocab), n)])


@pytest.mark.parametrize("shortlist", [True, False], ids=["shortlist", "full-softmax"])
def test_distillation_training_steps(shortlist):
    """6 steps of levers.train_step with its make_teacher (ngram_distill 0.3, leave-one-out) vs the JAX step
    with jax_impl.teacher's target, float64, from the same weights and batches: the (pure cross-entropy) losses
    and the parameters after every step."""
    dtype, n_steps = "float64", 6
    if shortlist:
        model, jconfig = H.shortlist_gpt("euler", "lie", 1, dtype, bias=False)
        tokens = _training_split(model.row_tokens.numpy())
    else:
        tconfig, jconfig = H.configs("euler", "lie", 1, bias=False)
        model = H.torch_gpt(tconfig, dtype)
        tokens = _training_split(np.arange(H.TINY["vocab_size"]))
    model.train()
    r = H.recipe(vocab_size=model.config.vocab_size, bias=False, warmup_iters=2, ngram_distill=0.3, ngram_loo=True)
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    torch_teacher = levers.make_teacher(r, model, tokens, "cpu")  # its cross-entropy in the log-probabilities' dtype
    opts = levers.make_optimizers(model, r, "cpu")
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    tparams = [p for p in model.parameters() if p.requires_grad]
    tx = jax_optim.make_optimizer(r, params, 10)
    state = tx.init(params)
    step = TrainSteps(jconfig, tx, r.ngram_distill)
    jax_teacher = jt.make_teacher(jconfig, tokens, r.ngram_distill)
    rng = np.random.default_rng(1)
    losses, worst = 0.0, 0.0
    for it in range(n_steps):
        starts = rng.integers(0, len(tokens) - H.SEQ - 1, H.BATCH)
        xb = np.stack([tokens[s : s + H.SEQ] for s in starts])
        yb = np.stack([tokens[s + 1 : s + H.SEQ + 1] for s in starts])
        train_mps.set_lr(opts, base_lrs, train_mps.lr_at(it, 10, r))
        loss_t = levers.train_step(model, opts, tparams, torch.from_numpy(xb), torch.from_numpy(yb), r, torch_teacher)
        probs = jnp.asarray(jt.teacher_target(jax_teacher, xb, yb, r.ngram_loo))
        params, state, loss_j = step(1, params, state, jnp.asarray(xb), jnp.asarray(yb), None, probs)
        losses = max(losses, H.max_abs(loss_j, loss_t))
        worst = max(worst, H.tree_max_rel(params, jax_impl.params_from_torch(model.state_dict(), jconfig)))
    assert all(f._cache_size() == 1 for f in step.steps.values()), "a jitted train step recompiled"
    assert losses <= tol(dtype, "loss"), f"loss: {losses:.3e}"
    assert worst <= tol(dtype, "training"), f"training: {worst:.3e}"


def test_jax_train_trains_with_the_teacher_and_records_it(tiny_data, tmp_path, monkeypatch):
    """`python -m jax_impl.train --ngram-distill 0.3 --ngram-loo` (its main, in this process): each training batch
    gets the leave-one-out target of a teacher over the model's shortlist rows, and the metrics' recipe records both
    flags; the recipe's rules refuse what train_mps refuses, before any work."""
    import jax_impl.train as jax_train_module

    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(tiny_data))
    monkeypatch.delenv("TRAIN_MPS_SEED", raising=False)
    calls = []

    def spy(counts, xb, yb, leave_one_out=False):
        calls.append((counts.n_rows, xb.shape, leave_one_out, np.array_equal(xb[:, 1:], yb[:, :-1])))
        return jt.teacher_target(counts, xb, yb, leave_one_out)

    monkeypatch.setattr(jax_train_module, "teacher_target", spy)
    out = tmp_path / "jax_out"
    jax_train_module.main(["--ngram-distill", "0.3", "--ngram-loo", "--max-iters", "2", "--out-dir", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["ngram_distill"] == 0.3 and metrics["recipe"]["ngram_loo"] is True
    k = metrics["model_config"]["shortlist_size"]
    assert k > 0 and calls == [(k, (train_mps.batch_size, train_mps.block_size), True, True)] * 2
    assert "teacher.py" in metrics["sources_sha256"]
    assert np.isfinite(metrics["best_vloss"]) and np.isfinite(metrics["val_loss_full"])
    with pytest.raises(ValueError, match="ngram_distill=0"):
        jax_train(max_iters=1, ngram_loo=True, out_dir=tmp_path / "refused")
    with pytest.raises(ValueError, match="ngram_distill must be"):
        jax_train(max_iters=1, ngram_distill=1.0, out_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
