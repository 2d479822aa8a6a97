"""model.py: nanoGPT compatibility, the integrator's invariants, and float32-only training ops."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model import GPT, SPLITTINGS, TABLEAUX, ButcherTableau, GPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from stability_report import poly_eval, stability_coefficients  # noqa: E402  R(z) of a tableau, a study's tool

NANOGPT_BLOCK = dict(solver="euler", steps_per_layer=1, splitting="lie")  # GPTConfig's defaults are the canonical's
TINY = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, bias=True, **NANOGPT_BLOCK)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def plain_prelayernorm_logits(model, idx):
    """The standard pre-LN GPT forward, written out with no integrator: x += A(x); x += M(x)."""
    t = model.transformer
    x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
    for block in t.h:
        x = x + block.attn(block.ln_1(x))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(t.ln_f(x))


@pytest.mark.parametrize("bias", [True, False])
def test_euler_lie_one_step_is_the_standard_block_bit_for_bit(bias):
    model = tiny_model(bias=bias).eval()
    idx = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        logits, _ = model(idx, idx)
        expected = plain_prelayernorm_logits(model, idx)
    assert torch.equal(logits, expected)


def test_other_integrators_differ_from_the_standard_block():
    # guards the test above against a model that ignores its integrator
    model = tiny_model().eval()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        base = plain_prelayernorm_logits(model, idx)
        model.set_integrator("heun", 2, "parallel")
        other, _ = model(idx, idx)
    assert not torch.allclose(other, base)


def test_nanogpt_parameter_names():
    names = set(tiny_model().state_dict())
    for name in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.ln_2.weight",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_proj.bias",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ]:
        assert name in names
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied


@pytest.mark.parametrize("solver", list(TABLEAUX))
@pytest.mark.parametrize("splitting", SPLITTINGS)
@pytest.mark.parametrize("steps", [1, 3])
def test_one_state_dict_runs_under_every_integrator(solver, splitting, steps):
    source = tiny_model()
    target = tiny_model(seed=1, solver=solver, splitting=splitting, steps_per_layer=steps)
    target.load_state_dict(source.state_dict(), strict=True)
    logits, loss = target(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))
    assert logits.shape == (2, 16, 64) and torch.isfinite(loss)


@pytest.mark.parametrize(
    "field, value, valid",
    [("solver", "rk5", "rk4_38"), ("splitting", "yoshida", "parallel"), ("steps_per_layer", 0, "positive")],
)
def test_bad_integrator_names_are_clear_errors(field, value, valid):
    with pytest.raises(ValueError, match=valid):
        GPTConfig(**{field: value})
    with pytest.raises(ValueError, match=valid):
        tiny_model().set_integrator(**{field: value})


@pytest.mark.parametrize(
    "a, b, c, msg",
    [
        (((), (0.5,)), (0.5, 0.5), (0.0, 1.0), "sums to 0.5"),  # row of a vs c
        (((), (1.0,)), (0.5, 0.6), (0.0, 1.0), "b sums"),
        (((), (1.0, 0.0)), (0.5, 0.5), (0.0, 1.0), "explicit"),
    ],
)
def test_tableau_validation(a, b, c, msg):
    with pytest.raises(ValueError, match=msg):
        ButcherTableau("bad", 2, a=a, b=b, c=c)


def test_tableaux_are_frozen():
    with pytest.raises(AttributeError):
        TABLEAUX["rk4"].b = (1.0,)


@pytest.mark.parametrize("solver", list(TABLEAUX))
@pytest.mark.parametrize("splitting", SPLITTINGS)
def test_nfe_matches_counted_field_calls(solver, splitting):
    model = tiny_model(solver=solver, splitting=splitting, steps_per_layer=2)
    calls = {"attn": 0, "mlp": 0}

    def counter(name):
        return lambda *args: calls.__setitem__(name, calls[name] + 1)

    for block in model.transformer.h:
        block.attn.register_forward_hook(counter("attn"))
        block.mlp.register_forward_hook(counter("mlp"))
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 8)))
    assert calls == model.nfe()


# --- stability polynomials ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TABLEAUX))
def test_stability_polynomial_is_truncated_exponential(name):
    # every method here has stages == order, so R(z) = sum_{k<=p} z^k / k! exactly
    tab = TABLEAUX[name]
    assert tab.stages == tab.order
    for z in [-2.5, -1.0, 0.3, complex(-1, 2), complex(0.5, -1.5)]:
        expected = sum(z**k / math.factorial(k) for k in range(tab.order + 1))
        assert abs(poly_eval(stability_coefficients(name), z) - expected) < 1e-12


def real_stability_boundary(tab):
    lo, hi = -10.0, -1e-3  # |R| <= 1 near 0^-, > 1 far out; bisect the crossing
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if abs(poly_eval(stability_coefficients(tab.name), mid)) > 1 else (lo, mid)
    return lo


@pytest.mark.parametrize(
    "name, boundary", [("euler", -2.0), ("heun", -2.0), ("rk4", -2.785293563), ("rk4_38", -2.785293563)]
)
def test_real_stability_boundary(name, boundary):
    assert real_stability_boundary(TABLEAUX[name]) == pytest.approx(boundary, abs=1e-6)


# --- float32 only in the training path (MPS has no float64) -------------------------------------


class DtypeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.float64_ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.float64_ops.append(str(func))
        return out


@pytest.mark.parametrize(
    "solver, splitting, shortlist_size", [("euler", "lie", 0), ("rk4", "strang", 0), ("heun", "parallel", 40)]
)
def test_training_step_uses_no_float64(solver, splitting, shortlist_size):
    model = tiny_model(
        solver=solver,
        splitting=splitting,
        kinetic_energy=0.1,
        jacobian_frobenius=0.1,
        dropout=0.1,
        shortlist_size=shortlist_size,
        unseen_mass=0.05 if shortlist_size else 0.0,
    )
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    idx = torch.randint(0, 64, (2, 16))
    recorder = DtypeRecorder()
    with recorder:
        _, loss = model(idx, idx)
        (loss + model.regularization_loss()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert recorder.float64_ops == []
    assert set(model.last_terms) == {"kinetic_energy", "jacobian_frobenius"}


def test_dtype_recorder_catches_float64():
    recorder = DtypeRecorder()
    with recorder:
        torch.ones(2, dtype=torch.float64) * 2
    assert recorder.float64_ops


# --- nanoGPT API --------------------------------------------------------------------------------


def test_generate_and_crop_block_size():
    model = tiny_model().eval()
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=20, top_k=5)
    assert out.shape == (1, 21)
    model.crop_block_size(8)
    assert model.transformer.wpe.weight.shape == (8, 16)
    with pytest.raises(ValueError, match="block size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_configure_optimizers_decays_matrices_only():
    model = tiny_model()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, nodecay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert nodecay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in nodecay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_zero_init_proj_makes_each_layer_the_identity():
    model = tiny_model(zero_init_proj=True, bias=False).eval()
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        assert torch.equal(model.integrate(x), x)


def test_regularization_is_off_at_no_cost():
    model = tiny_model()
    _, loss = model(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))
    assert model.last_terms == {} and model.regularization_loss() == 0.0
    assert loss.item() == pytest.approx(math.log(64), abs=0.5)


def test_forward_loss_stays_pure_cross_entropy_under_regularization():
    model = tiny_model(kinetic_energy=1.0, jacobian_frobenius=1.0)
    idx = torch.randint(0, 64, (2, 16))
    logits, loss = model(idx, idx)
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 64), idx.view(-1)))
    assert model.regularization_loss().item() > 0
