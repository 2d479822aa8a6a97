"""Issue #35's capacity levers in levers.py (LeverConfig.mlp_width, glu, head_dim, norm, qk_norm): off, a lever model
is model.py's; their configs are validated; the widths and the gate keep Block.fused_field, the others opt out of it without
the edit warning; parameter counts; a short train() through train_mps and its checkpoint reloaded. Their torch <-> JAX
parity is in parity_tests/test_capacity_parity.py."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import levers
import model
import train_mps
from levers import LeverConfig, LeverGPT

SMALL = dict(block_size=16, vocab_size=300, n_layer=2, n_head=2, n_embd=8, bias=False)
OFF = dict(mlp_width=0, glu="", head_dim=0, norm="layer", qk_norm=False)
ALL = dict(mlp_width=48, glu="swiglu", head_dim=12, norm="rms", qk_norm=True)
CAPACITY = dict(mlp_width=64, glu="swiglu", head_dim=16, norm="rms", qk_norm=True)  # for train_mps's n_embd 32
SHORT = "6"


def lever_model(**kw) -> LeverGPT:
    torch.manual_seed(0)
    return LeverGPT(LeverConfig(**{**SMALL, **kw}))


def tokens(b=2, t=16, seed=1):
    return torch.randint(0, SMALL["vocab_size"], (b, t), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(m, idx):
    m.zero_grad()
    logits, loss = m(idx, idx)
    loss.backward()
    return logits, loss, [p.grad.clone() for p in m.parameters()]


# -- off: model.py's model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_off_the_levers_are_model_py_s(bias):
    """Every capacity lever at its off value: model.GPT's init stream (the same weights), modules and fused field,
    the same logits, loss and gradients bit for bit."""
    torch.manual_seed(0)
    plain = model.GPT(model.GPTConfig(**{**SMALL, "bias": bias}))
    lever = lever_model(**OFF, bias=bias)
    assert not levers.widened(lever.config)
    assert list(plain.state_dict()) == list(lever.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), lever.state_dict().values()))
    assert [type(b.attn) for b in lever.transformer.h] == [model.CausalSelfAttention] * SMALL["n_layer"]
    assert [b.fused for b in lever.transformer.h] == [b.fused for b in plain.transformer.h] == [not bias] * 2
    idx = tokens()
    (lp, sp, gp), (ll, sl, gl) = loss_and_grads(plain, idx), loss_and_grads(lever, idx)
    assert torch.equal(lp, ll) and torch.equal(sp, sl) and all(torch.equal(a, b) for a, b in zip(gp, gl))


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_nanogpt_s_widths_compute_what_gpt_computes(norm):
    """mlp_width = 4 n_embd and head_dim = n_embd / n_head swap in WideMLP and WideAttention with model.py's shapes:
    on GPT's weights, its loss and gradients bit for bit. (They draw other initial weights: building the swapped
    modules advances the random stream before GPT's init. norm="rms" on both sides: RMSNorm in place of
    LayerNorm, so only the widths' modules differ.)"""
    C, nh = SMALL["n_embd"], SMALL["n_head"]
    reference = lever_model(norm=norm)
    wide = lever_model(mlp_width=4 * C, head_dim=C // nh, norm=norm)
    assert isinstance(wide.transformer.h[0].attn, levers.WideAttention) and levers.widened(wide.config)
    wide.load_state_dict(reference.state_dict(), strict=True)
    assert [b.fused for b in wide.transformer.h] == [b.fused for b in reference.transformer.h]
    idx = tokens()
    (_, s0, g0), (_, s1, g1) = loss_and_grads(reference, idx), loss_and_grads(wide, idx)
    assert torch.equal(s0, s1) and all(torch.equal(a, b) for a, b in zip(g0, g1))


# -- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mlp_width", -1, r"mlp_width must be an integer >= 0 \(0 = nanoGPT's\), a multiple of n_head"),
        ("mlp_width", 7, r"mlp_width must be .* a multiple of n_head for mlp_width, got"),  # n_head 2
        ("mlp_width", 16.0, r"mlp_width must be an integer"),
        ("head_dim", -4, r"head_dim must be an integer >= 0 \(0 = nanoGPT's\)"),
        ("head_dim", True, r"head_dim must be an integer"),
        ("glu", "reglu", r"glu must be one of \['', 'geglu', 'swiglu'\] \('' = nanoGPT's ungated MLP\), got 'reglu'"),
        ("glu", None, r"glu must be one of"),
        ("norm", "batch", r"norm must be 'layer' or 'rms', got 'batch'"),
        ("qk_norm", 1, r"qk_norm must be True or False, got 1"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(field, value, message):
    with pytest.raises(ValueError, match=message):
        LeverConfig(**{**SMALL, field: value})
    with pytest.raises(ValueError, match=message):  # a recipe is judged by building its config (n_head 4)
        levers.LeverRecipe(**{field: 6 if (field, value) == ("mlp_width", 7) else value})


# -- the fused field -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "widths",
    [
        dict(mlp_width=24),
        dict(head_dim=12),
        dict(mlp_width=48, head_dim=2),
        dict(glu="geglu"),
        dict(glu="swiglu", mlp_width=24, head_dim=12),
    ],
    ids=lambda w: str(w),
)
def test_widths_keep_the_fused_field_and_it_agrees(widths, capsys):
    """Block.fused_field reads D and H off the modules and the hidden layer off MLP.act (the gate under glu): a
    model with other widths or a gated MLP still fuses (no warning), and its loss and gradients fused and unfused
    agree in float64 on perturbed weights (every block, every step)."""
    m = lever_model(**widths, solver="heun", splitting="parallel", steps_per_layer=2).double()
    assert all(b.fused for b in m.transformer.h)
    assert "fused_field" not in capsys.readouterr().err
    with torch.no_grad():
        torch.manual_seed(3)
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    idx = tokens()
    _, fused_loss, fused_grads = loss_and_grads(m, idx)
    for b in m.transformer.h:
        b.fused = False
    _, loss, grads = loss_and_grads(m, idx)
    assert math.isclose(fused_loss.item(), loss.item(), rel_tol=1e-13)
    for a, b in zip(fused_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("lever", [dict(norm="rms"), dict(qk_norm=True), ALL])
def test_other_levers_opt_out_of_the_fused_field_silently(lever, capsys):
    """norm="rms" and qk_norm compute what fused_field does not: Block.fusable False, so every block integrates
    attn + mlp itself, and model.py's "was edited" warning is not printed (it is for edits, not levers)."""
    m = lever_model(**lever)
    assert [(b.fusable, b.fused) for b in m.transformer.h] == [(False, False)] * SMALL["n_layer"]
    err = capsys.readouterr().err
    assert "edited" not in err and "fused_field" not in err, err


def test_an_edit_still_warns(capsys, monkeypatch):
    """The opt-out is Block.fusable, not a silenced check: a block whose modules differ from fused_field without
    saying so still gets model.py's warning."""
    monkeypatch.setattr(levers.WideMLP, "forward", lambda self, x: self.c_proj(torch.relu(self.c_fc(x))))
    m = lever_model(mlp_width=24)
    assert not any(b.fused for b in m.transformer.h)
    assert "was edited" in capsys.readouterr().err


# -- parameter counts ----------------------------------------------------------------------------------------------


def expected_params(block_size, vocab_size, n_layer, n_head, n_embd, bias, mlp_width=0, glu="", head_dim=0,
                    norm="layer", qk_norm=False) -> int:  # fmt: skip
    """The count from the levers' definitions: D = n_head hs per q, k, v; H hidden units, c_fc 2H under glu;
    LayerNorm C gains (+ C biases under bias), RMSNorm C gains; qk_norm 2 hs gains; wte tied to lm_head."""
    C, hs = n_embd, head_dim or n_embd // n_head
    D, H = n_head * hs, mlp_width or 4 * n_embd
    H_in = 2 * H if glu else H
    norm_params = C * (2 if bias and norm == "layer" else 1)
    attn = C * 3 * D + D * C + (3 * D + C if bias else 0) + (2 * hs if qk_norm else 0)
    mlp = C * H_in + H * C + (H_in + C if bias else 0)
    return vocab_size * C + block_size * C + n_layer * (2 * norm_params + attn + mlp) + norm_params


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "lever",
    [
        OFF,
        dict(mlp_width=48),
        dict(glu="geglu"),
        dict(glu="swiglu", mlp_width=22),
        dict(head_dim=12),
        dict(norm="rms"),
        dict(qk_norm=True),
        ALL,
    ],  # fmt: skip
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items() if OFF[k] != v) or "off",
)
def test_parameter_counts(lever, bias):
    m = lever_model(**lever, bias=bias)
    assert sum(p.numel() for p in m.parameters()) == expected_params(**{**SMALL, "bias": bias, **lever})
    if lever is OFF:
        assert expected_params(**{**SMALL, "bias": bias}) == sum(
            p.numel() for p in model.GPT(model.GPTConfig(**{**SMALL, "bias": bias})).parameters()
        )


def test_the_combination_s_shapes():
    m = lever_model(**ALL)
    block = m.transformer.h[0]
    assert tuple(block.attn.c_attn.weight.shape) == (3 * 2 * 12, 8) and tuple(block.attn.c_proj.weight.shape) == (8, 24)
    assert tuple(block.mlp.c_fc.weight.shape) == (2 * 48, 8) and tuple(block.mlp.c_proj.weight.shape) == (8, 48)
    assert tuple(block.attn.q_norm.weight.shape) == tuple(block.attn.k_norm.weight.shape) == (12,)
    assert all(isinstance(n, levers.RMSNorm) for n in (block.ln_1, block.ln_2, m.transformer.ln_f))


# -- the levers' modules against independent formulas ----------------------------------------------------------------


def test_rms_norm_is_its_formula():
    norm = levers.RMSNorm(5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 6.0))
    x = torch.randn(3, 5, dtype=torch.float64)
    want = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * torch.arange(1.0, 6.0, dtype=torch.float64)
    torch.testing.assert_close(norm(x), want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("glu, act", [("geglu", torch.nn.functional.gelu), ("swiglu", torch.nn.functional.silu)])
def test_gated_mlp_is_act_of_the_first_half_times_the_second(glu, act):
    mlp = levers.WideMLP(LeverConfig(**{**SMALL, "mlp_width": 6, "glu": glu})).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    a, g = x @ mlp.c_fc.weight[:6].T, x @ mlp.c_fc.weight[6:].T
    torch.testing.assert_close(mlp(x), (act(a) * g) @ mlp.c_proj.weight.T, rtol=1e-13, atol=1e-15)


def test_wide_attention_is_causal_softmax_attention_per_head():
    """head_dim 12 with QK-norm, against an explicit per-head computation (scale 1 / sqrt(head_dim))."""
    cfg = LeverConfig(**{**SMALL, "head_dim": 12, "qk_norm": True})
    attn = levers.WideAttention(cfg).double()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    q, k, v = (x @ attn.c_attn.weight.T).split(24, dim=-1)
    heads = []
    for h in range(2):
        qh, kh, vh = (t[..., 12 * h : 12 * (h + 1)] for t in (q, k, v))
        qh, kh = attn.q_norm(qh), attn.k_norm(kh)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(12)
        scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ vh)
    torch.testing.assert_close(attn(x), torch.cat(heads, dim=-1) @ attn.c_proj.weight.T, rtol=1e-12, atol=1e-14)


# -- training through train_mps ------------------------------------------------------------------------------------


def test_a_short_run_trains_and_its_checkpoint_reloads(run_env):
    """levers.train with every capacity lever on (the canonical recipe otherwise: shortlist, heun/parallel, random
    steps; no warmup and no EMA, so that SHORT iterations move the weights and the checkpoint holds them), on a cycled
    token stream: the run's whole-split val loss is below its initial weights' (measured 1.89 vs 2.61 nats), the
    checkpoint's model_args carry the levers, and levers.model_from_args rebuilds the model (strict load) whose
    whole-split val loss is the run's, to the bit."""
    data_dir = train_mps.find_data_dir()
    for split, n in (("train", 4000), ("val", 1000)):  # learnable: 0..12 cycled, another phase per split
        np.roll(np.arange(n) % 13, n % 7).astype(np.uint16).tofile(data_dir / f"{split}.bin")
    r = replace(levers.LeverRecipe(), **CAPACITY, warmup_iters=0, ema_decay=0.0)
    levers.train(r)
    metrics = json.loads((run_env / "metrics.json").read_text())
    ckpt = torch.load(run_env / "ckpt.pt", map_location="cpu", weights_only=False)
    args = ckpt["model_args"]
    assert {k: args[k] for k in OFF} == CAPACITY
    reloaded = levers.model_from_args(args)
    reloaded.load_state_dict(ckpt["model"], strict=True)
    assert isinstance(reloaded.transformer.ln_f, levers.RMSNorm) and not reloaded.transformer.h[0].fused
    val = torch.from_numpy(train_mps.load_split(data_dir, "val", r.vocab_size).astype("int64"))
    assert train_mps.full_split_loss(reloaded, val) == metrics["val_loss_full"]
    torch.manual_seed(r.seed)  # train()'s initial weights, as it draws them
    initial = train_mps.make_model(r, train_mps.load_split(data_dir, "train", r.vocab_size))
    assert metrics["val_loss_full"] < train_mps.full_split_loss(initial, val)
