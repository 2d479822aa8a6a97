"""Issue #32: kernels per training step. The fused parallel field (and its check that an edit always takes effect),
the fused optimizer, the drawn step counts' distribution, reused memory for the (b, t, vocab) log-probabilities, and
scripts/bench_dispatch.py / bench_train.py. Counts are deterministic: they are asserted; times are not."""

import copy
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_bins

import levers
import model as M
import train_mps as tm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_dispatch  # noqa: E402
import bench_train  # noqa: E402

TOKENS = np.random.default_rng(0).integers(0, 400, 3000).astype(np.uint16)


def canonical(**fields):
    torch.manual_seed(0)
    return tm.make_model(replace(tm.Recipe(), **fields), TOKENS)


# --- the fused parallel field -------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_the_fused_field_is_the_parallel_field(solver):
    """float64: the fused form integrates the same function as attn + mlp (they differ by rounding only)."""
    model = canonical().double()
    assert all(b.fused for b in model.transformer.h)
    model.set_integrator(solver=solver, splitting="parallel", steps_per_layer=2)
    idx = torch.from_numpy(TOKENS[:128].astype(np.int64)).view(2, 64)
    fused_logits, fused_loss = model(idx, idx)
    for b in model.transformer.h:
        b.fused = False
    logits, loss = model(idx, idx)
    assert torch.allclose(fused_logits, logits, rtol=0, atol=1e-12) and abs(fused_loss.item() - loss.item()) < 1e-12
    (g_fused,) = torch.autograd.grad(fused_loss, model.transformer.h[0].ln_1.weight)
    for b in model.transformer.h:
        b.fused = True
    (g,) = torch.autograd.grad(model(idx, idx)[1], model.transformer.h[0].ln_1.weight)
    assert torch.allclose(g_fused, g, rtol=1e-9, atol=1e-12)


def test_the_fused_field_is_off_where_it_does_not_apply():
    assert not any(b.fused for b in canonical(bias=True).transformer.h)
    assert not any(b.fused for b in canonical(dropout=0.1).transformer.h)


@pytest.mark.parametrize(
    "edit",
    [
        # what an LLM writes into model.py: another activation, QK-norm-like scaling, RMSNorm, a wider MLP
        ("MLP", "forward", lambda self, x: self.c_proj(torch.relu(self.c_fc(x)) ** 2)),
        ("CausalSelfAttention", "forward", lambda self, x, f=M.CausalSelfAttention.forward: 0.5 * f(self, x)),
        ("LayerNorm", "forward", lambda self, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight),
        ("MLP", "forward", lambda self, x, f=M.MLP.forward: f(self, x) + 1e-3 * torch.randn_like(x) * self.training),
    ],
    ids=["relu-squared", "scaled-attention", "rmsnorm", "noise-in-training"],
)
def test_an_edited_field_takes_effect_under_the_parallel_splitting(edit, monkeypatch, capsys):
    """An edit of the modules the fused form re-associates is never lost: the check at construction finds the two
    apart, says so on stderr naming model.py, and the parallel splitting integrates the edited attn + mlp."""
    cls, name, fn = edit
    idx = torch.from_numpy(TOKENS[:64].astype(np.int64)).view(1, 64)
    before = canonical().train()(idx, idx)[1].item()
    monkeypatch.setattr(getattr(M, cls), name, fn)
    model = canonical()
    assert not any(b.fused for b in model.transformer.h)
    assert "model.py: Block.fused_field no longer equals attn + mlp" in capsys.readouterr().err
    model.eval().set_integrator(solver="heun", splitting="parallel", steps_per_layer=1)
    block, x = model.transformer.h[0], torch.randn(2, 8, model.config.n_embd)
    with torch.no_grad():
        k1 = block.both_field(x)
        assert torch.allclose(block(x), x + 0.5 * (k1 + block.both_field(x + k1)), atol=1e-6)  # heun, h = 1
    assert model.train()(idx, idx)[1].item() != before  # a number moved


def test_the_check_leaves_the_callers_random_stream_alone():
    block = canonical().transformer.h[0]
    torch.manual_seed(5)
    assert M.fused_field_agrees(block)
    a = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(a, torch.rand(3))


# --- the recipe's step counts and optimizer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        (dict(steps_per_layer=2, random_steps=4), {2: 1 / 3, 3: 1 / 3, 4: 1 / 3}),
        (dict(steps_per_layer=1, random_steps=2, refine_prob=0.6), {1: 0.7, 2: 0.3}),
        (dict(steps_per_layer=3, random_steps=0), {3: 1.0}),
    ],
)
def test_draws_follow_step_counts(fields, want):
    r = levers.LeverRecipe(**fields)
    assert levers.step_counts(r) == pytest.approx(want)
    rng = random.Random(0)
    draws = [r.draw_steps(rng) for _ in range(6000)]
    for n, p in want.items():
        assert abs(draws.count(n) / len(draws) - p) < 0.03
    assert set(draws) == set(want)


def test_refine_prob_one_draws_as_before_it_existed():
    """refine_prob=1 keeps the random stream of the recipes recorded before it: one randint per step, as
    train_mps.Recipe draws without levers.py."""
    for recipe in (tm.Recipe, levers.LeverRecipe):
        r, rng, old = recipe(steps_per_layer=2, random_steps=4), random.Random(7), random.Random(7)
        assert [r.draw_steps(rng) for _ in range(50)] == [old.randint(2, 4) for _ in range(50)]


@pytest.mark.parametrize(
    "fields", [dict(refine_prob=1.5), dict(refine_prob=-0.1), dict(random_steps=0, refine_prob=0.5)]
)
def test_bad_refine_prob_is_refused(fields):
    with pytest.raises(ValueError, match="refine_prob"):
        levers.LeverRecipe(**fields)


def test_the_fused_optimizer_takes_nanogpts_step():
    """One AdamW step, fused or nanoGPT's per-tensor loop, on the same gradients: the same parameters up to
    float32 rounding of an elementwise update (a few ulps of each parameter)."""
    models = [canonical(), canonical()]
    idx = torch.from_numpy(TOKENS[:128].astype(np.int64)).view(2, 64)
    for model, fused in zip(models, (True, False)):
        r = replace(tm.Recipe(), fused_optimizer=fused)
        (opt,) = tm.make_optimizers(model, r, "cpu")
        assert opt.defaults.get("fused") is (True if fused else None)
        if not fused:  # nanoGPT's groups, as configure_optimizers makes them
            assert [g["weight_decay"] for g in opt.param_groups] == [r.weight_decay, 0.0]
        model(idx, idx)[1].backward()
        opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


# --- reused memory ------------------------------------------------------------------------------------------------


def test_logits_reuse_memory_only_when_nothing_holds_them():
    model = canonical()
    idx = torch.from_numpy(TOKENS[:128].astype(np.int64)).view(2, 64)
    first, _ = model(idx, idx)
    want = first.clone()
    second, _ = model(idx, idx)  # the first still held: other memory
    assert second.data_ptr() != first.data_ptr() and torch.equal(second, want)
    ptr = second.data_ptr()
    del first, second
    third, _ = model(idx, idx)
    assert third.data_ptr() == ptr and torch.equal(third, want)  # reused
    third.fill_(0.0)  # an in-place edit of the logits: the next forward fills again
    del third
    assert torch.equal(model(idx, idx)[0], want)
    saved = torch.logsumexp(model(idx, idx)[0], -1).sum()  # held by autograd only
    fourth, _ = model(idx, idx)
    assert torch.equal(fourth, want)
    saved.backward()  # the saved logits were not overwritten
    assert copy.deepcopy(model).vocab_memory.base is None  # scratch memory, not state


# --- the benchmarks -----------------------------------------------------------------------------------------------


def test_dispatch_counts_by_section(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(write_bins(tmp_path / "data")))
    out = tmp_path / "d.json"
    result = bench_dispatch.main(["--configs", "baseline", "canonical:random_steps=0", "canonical", "--out", str(out)])
    base, fixed, drawn = result["configs"]
    assert json.loads(out.read_text())["configs"][0]["step_kernels"] == base["step_kernels"]
    # nanoGPT's AdamW loop: ~10 kernels per parameter tensor; the fused one, one per group (and a step counter)
    assert base["sections"]["optimizer"]["kernels"] > 200 and fixed["sections"]["optimizer"]["kernels"] <= 4
    assert base["sections"]["ema"]["kernels"] == 0 and fixed["sections"]["ema"]["kernels"] == 1
    for c in (base, fixed, drawn):
        assert c["step_kernels"] == pytest.approx(
            sum(c["sections"][s]["kernels"] for s in bench_dispatch.STEP_SECTIONS)
        )
        assert c["sections"]["evaluation"]["kernels"] > 0 and c["step_views"] > 0
    # the draws' expectation: the mean over the counts of each step count's own count
    per = {n: sum(sum(ops.values()) for ops in by.values()) for n, by in drawn["by_step_count"].items()}
    probs = {str(n): p for n, p in levers.step_counts(tm.Recipe()).items()}
    assert drawn["step_kernels"] == pytest.approx(sum(probs[n] * per[n] for n in per))
    assert set(per) == set(probs) and len(per) > 1


@pytest.mark.parametrize("fields", [{}, {"shortlist": False}], ids=["canonical", "full-softmax"])
def test_with_its_levers_off_a_lever_model_dispatches_model_py_s_kernels(fields):
    """bench_dispatch counts every configuration on levers.LeverGPT; with the levers off it must dispatch exactly what
    the harness's model.GPT does, forward and backward (a lever's seam that adds even a "+ 0" would show here)."""
    torch.manual_seed(0)
    plain = tm.make_model(replace(tm.Recipe(), **fields), TOKENS)
    torch.manual_seed(0)
    lever = tm.make_model(replace(levers.LeverRecipe(), **fields), TOKENS)
    assert type(plain) is M.GPT and type(lever) is levers.LeverGPT
    xb, yb = (torch.from_numpy(TOKENS[i : i + 8 * 16].astype(np.int64)).view(8, 16) for i in (0, 1))

    def ops(m):
        def step():
            m(xb, yb)[1].backward()

        return {s: dict(t["ops"]) for s, t in bench_dispatch.count_ops(step).items()}

    assert ops(lever) == ops(plain)


def test_is_view_op_tells_views_from_kernels():
    for name in ("aten::view", "aten::t", "aten::transpose", "aten::split", "aten::reshape", "aten::detach"):
        assert bench_dispatch.is_view_op(name), name
    for name in ("aten::add", "aten::add_", "aten::mm", "aten::index_copy_", "aten::cat", "aten::item"):
        assert not bench_dispatch.is_view_op(name), name


def test_train_time_per_iteration_is_a_difference_of_two_runs(tmp_path, monkeypatch):
    calls = []

    def fake(root, fields, iters, data_dir, threads):
        calls.append((fields, iters))
        return iters * (0.002 if fields else 0.001) + 0.5  # minutes: set-up 0.5, then 0.06 or 0.12 s an iteration

    monkeypatch.setattr(bench_train, "run_train", fake)
    out = tmp_path / "t.json"
    result = bench_train.main(["--configs", "canonical", "baseline", "--repeats", "2", "--out", str(out)])
    canon, base = result["configs"]
    assert canon["median_ms"] == pytest.approx(60.0) and base["median_ms"] == pytest.approx(120.0)
    assert base["median_ratio"] == pytest.approx(2.0) and len(calls) == 8
    assert (
        json.loads(out.read_text())["repeats"] == 2
    )  # written after each repeat: an interrupted run keeps its repeats
    with pytest.raises(SystemExit, match="no train_mps.py"):
        bench_train.main(["--configs", f"{tmp_path}::canonical", "--out", str(out)])


# --- edits an LLM makes (issue #34) -------------------------------------------------------------------------------


def nanogpt_block_forward(self, x):
    """Block.forward as nanoGPT writes it (and an LLM from memory): one Euler step of each sub-field."""
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


def test_a_nanogpt_style_block_forward_trains(monkeypatch):
    """Block.forward(self, x) replaces the integrator with nanoGPT's block: the edit takes effect, and a training step
    runs (it failed at the first forward with 'takes 2 positional arguments but 3 were given')."""
    idx = torch.from_numpy(TOKENS[:128].astype(np.int64)).view(2, 64)
    before = canonical().eval()(idx, idx)[1].item()
    monkeypatch.setattr(M.Block, "forward", nanogpt_block_forward)
    model = canonical()
    r = tm.Recipe()
    opts = tm.make_optimizers(model, r, "cpu")
    loss = tm.train_step(model, opts, [p for p in model.parameters() if p.requires_grad], idx, idx, r)
    assert torch.isfinite(loss)
    assert model.eval()(idx, idx)[1].item() != before


def test_a_nanogpt_style_block_forward_with_regularizers_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(M.Block, "forward", nanogpt_block_forward)
    with pytest.raises(TypeError, match=r"model.py: Block.forward\(self, x\).*Block.forward\(self, x, stats=None\)"):
        canonical(kinetic_energy=0.01)


@pytest.mark.parametrize(("field", "value"), [("solver", "rk4"), ("splitting", "strang"), ("kinetic_energy", 0.01)])
def test_a_gptconfig_default_edited_in_model_py_changes_the_trained_model(field, value, tmp_path):
    """GPTConfig is the model fields' one source: an edit of its default in model.py alone (the natural place for a
    differential-equations specialist) reaches Recipe and the trained model, loaded as the current harness loads a
    candidate (spec_from_file_location of the folder's train_mps.py, which loads the model.py beside it)."""
    import importlib.util
    import shutil

    source = (ROOT / "model.py").read_text()
    old = getattr(M.GPTConfig, field)
    default = f"    {field}: {type(old).__name__} = {json.dumps(old)}"
    assert source.count(default) == 1, default
    (tmp_path / "model.py").write_text(
        source.replace(default, f"    {field}: {type(value).__name__} = {json.dumps(value)}")
    )
    shutil.copy(ROOT / "train_mps.py", tmp_path / "train_mps.py")
    spec = importlib.util.spec_from_file_location("candidate_train_mps", tmp_path / "train_mps.py")
    candidate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(candidate)
    assert getattr(candidate.Recipe(), field) == value != getattr(tm.Recipe(), field)
    assert getattr(candidate.make_model(candidate.Recipe(), TOKENS).config, field) == value


def test_a_short_run_evaluates_trained_weights_and_says_it_is_short(tmp_path, monkeypatch, capsys):
    """Issue #34 item 4: in a 101-iteration run the EMA (bias-corrected) has moved off the initial weights, so the
    evaluation at iteration 100 is below iteration 0's and is the best_vloss returned (the plain EMA's was still
    the initial model's, and every candidate returned its iteration-0 loss); the run says it is a smoke test."""
    data = tmp_path / "data"  # a skewed unigram (Zipf), which 100 steps learn; uniform random text is unlearnable
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 4000), ("val", 1000)):
        np.minimum(rng.zipf(1.3, n), 299).astype(np.uint16).tofile(data / f"{split}.bin")
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(data))
    monkeypatch.setenv("TRAIN_MPS_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "101")
    monkeypatch.delenv("TRAIN_MPS_SEED", raising=False)
    best, _ = tm.train()
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert [h["iter"] for h in history] == [0, 100]
    assert history[1]["val_loss"] < history[0]["val_loss"] - 0.1 and best == history[1]["val_loss"]
    assert "is a smoke test's, not a result" in capsys.readouterr().err


def test_the_ema_weight_is_the_bias_corrected_average():
    """ema_weight makes the EMA the d-weighted mean of the weights of steps 0..t: weight 1 at step 0, then
    (1 - d) / (1 - d^(t+1)) -> 1 - d, the plain EMA's."""
    d = 0.9
    assert tm.ema_weight(0, d) == 1.0 and tm.ema_weight(10_000, d) == pytest.approx(1 - d)
    ema, seen = torch.zeros(()), []
    for t in range(6):
        x = torch.tensor(float(t * t))
        seen.append(x)
        tm.ema_update([ema], [x], tm.ema_weight(t, d))
        weights = torch.tensor([d ** (t - i) for i in range(t + 1)])
        assert ema.item() == pytest.approx((weights * torch.stack(seen)).sum().item() / weights.sum().item())
