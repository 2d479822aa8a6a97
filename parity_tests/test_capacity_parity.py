"""Issue #35's capacity levers (levers.py: mlp_width, glu, head_dim, norm="rms", qk_norm, and issue #16's output
features head_width, and the mixture of softmaxes mos) in the JAX mirror: the
weights convert both ways, and the JAX model computes what levers.LeverGPT computes (logits, loss, gradients,
regularizers, training steps) in float64 within tolerances.TOLERANCES. The checks run on perturbed weights (norm
gains away from 1), and the last tests show they fail on a mirror with a wrong epsilon, a dropped gain or another
GELU."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

import jax_impl
import levers
import train_mps
from jax_impl import model as jax_model
from parity_tests import harness as H
from parity_tests.tolerances import TOLERANCES, chain_widths, float32_table, tol


def assert_within(diffs: dict, dtype: str):
    for quantity, worst in diffs.items():
        assert worst <= tol(dtype, quantity), f"{quantity}: {worst:.3e} > {tol(dtype, quantity):.0e}"


def _id(case):
    return "-".join(map(str, case))


# -- weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lever", list(H.CAPACITY_LEVERS))
def test_state_dict_round_trip_is_exact(lever, bias):
    """torch -> JAX -> torch, every tensor equal in torch's key order; a strict load into a fresh model; the JAX
    tree and shapes are those jax_impl.init_params builds for the config."""
    tconfig, jconfig = H.configs("euler", "lie", 1, bias=bias, **H.CAPACITY_LEVERS[lever])
    model = H.perturb(H.torch_gpt(tconfig, "float64"))
    params, back = H.round_trip(model, jconfig)
    fresh = levers.LeverGPT(tconfig).double()
    fresh.load_state_dict(back, strict=True)
    init = jax_impl.init_params(jax.random.PRNGKey(0), jconfig, jax.numpy.float64)
    shapes = jax.tree_util.tree_map(np.shape, params)
    assert jax.tree_util.tree_map(np.shape, init) == shapes


def test_widths_reach_the_jax_tree():
    """The combination's widths: D = 2 heads x 16 = 32 per q, k, v; H = 64 hidden units, c_fc 2H under swiglu;
    RMSNorm gains without biases, qk gains of one head's width, head_width's two matrices, mos's two."""
    tconfig, jconfig = H.configs("euler", "lie", 1, **H.CAPACITY_LEVERS["all"])
    params = jax_impl.params_from_torch(H.torch_gpt(tconfig, "float64").state_dict(), jconfig)
    h, L, C = params["h"], tconfig.n_layer, tconfig.n_embd
    assert h["attn"]["c_attn"]["kernel"].shape == (L, C, 96) and h["attn"]["c_proj"]["kernel"].shape == (L, 32, C)
    assert h["mlp"]["c_fc"]["kernel"].shape == (L, C, 128) and h["mlp"]["c_proj"]["kernel"].shape == (L, 64, C)
    assert set(h["attn"]["q_norm"]) == set(h["attn"]["k_norm"]) == {"scale"}
    assert h["attn"]["q_norm"]["scale"].shape == (L, 16)
    assert set(h["ln_1"]) == set(h["ln_2"]) == set(params["ln_f"]) == {"scale"}  # RMSNorm: no bias under bias=True
    assert "bias" in h["attn"]["c_attn"] and "bias" in h["mlp"]["c_fc"]
    # head_width's A (C -> 12) and U (12 -> one column per output row), beside the tied wte
    assert params["head_up"]["kernel"].shape == (C, 12)
    assert params["head_wide"]["kernel"].shape == (12, tconfig.vocab_size)
    # mos's mixture weights W (C -> 3) and its 3 projections P_k side by side (C -> 3 C)
    assert params["head_prior"]["kernel"].shape == (C, 3) and params["head_mix"]["kernel"].shape == (C, 3 * C)


@pytest.mark.parametrize(
    "torch_lever, jax_lever, name",
    [
        ("head_dim", "", "c_attn"),  # wider heads into nanoGPT's widths
        ("qk_norm", "", "unmapped torch keys"),  # q_norm / k_norm with nowhere to go
        ("", "qk_norm", "q_norm"),  # the gains missing
        ("rms", "", "ln_f.bias"),  # LayerNorm's bias missing under bias=True
        ("swiglu", "mlp_width", "c_fc"),  # 2H gated inputs into an ungated MLP of H = 48
        ("head_width", "", "unmapped torch keys"),  # the output features with nowhere to go
        ("", "head_width", "head_up.weight missing"),  # the features missing
        ("mos", "", "unmapped torch keys"),  # a mixture read as one softmax
    ],
)
def test_conversion_rejects_another_levers_weights(torch_lever, jax_lever, name):
    tconfig, _ = H.configs("euler", "lie", 1, **H.CAPACITY_LEVERS.get(torch_lever, {}))
    _, jconfig = H.configs("euler", "lie", 1, **H.CAPACITY_LEVERS.get(jax_lever, {}))
    with pytest.raises(AssertionError, match=name):
        jax_impl.params_from_torch(H.torch_gpt(tconfig, "float64").state_dict(), jconfig)


def test_checkpoint_args_convert_both_ways():
    """A checkpoint's model_args (a LeverConfig's fields) -> the JAX config -> back, the levers kept."""
    tconfig, _ = H.configs("heun", "parallel", 1, **H.CAPACITY_LEVERS["all"])
    jconfig = jax_impl.config_from_torch(tconfig)
    assert (jconfig.mlp_width, jconfig.glu, jconfig.head_dim, jconfig.norm, jconfig.qk_norm) == (
        64,
        "swiglu",
        16,
        "rms",
        True,
    )
    assert levers.LeverConfig(**jax_impl.torch_config_kwargs(jconfig)) == tconfig


# -- forward, backward, training --------------------------------------------------------------------


@pytest.mark.parametrize("case", H.CAPACITY_GRID, ids=_id)
def test_logits_loss_and_gradients(case):
    assert_within(H.check_capacity(*case), case[-1])


def test_the_float32_table_bounds_the_capacity_case():
    """TOLERANCES["float32"] is derived for TINY's worst nanoGPT case (18 sub-field evaluations of the nanoGPT chain);
    the capacity levers' float32 cases evaluate wider chains fewer times, and their own bounds (the same derivation,
    tolerances.float32_table, with their widths and evaluation counts) lie below the table: it applies to them."""
    cases = [c for c in H.CAPACITY_GRID if c[-1] == "float32"]
    assert cases
    for _, lever, solver, splitting, steps, bias, _ in cases:
        tconfig, _ = H.configs(solver, splitting, steps, bias=bias, **H.CAPACITY_LEVERS[lever])
        evaluations = sum(levers.LeverGPT(tconfig).nfe().values())
        own = float32_table(evaluations, **chain_widths(tconfig))
        assert all(own[q] <= TOLERANCES["float32"][q] for q in own), (own, TOLERANCES["float32"])


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_steps_with_every_lever(optimizer):
    """The canonical integrator with its drawn step counts (1..2): the optimizers' groups over the levers' parameters
    (RMSNorm gains are 1-D: no decay, AdamW under Muon; the wider matrices are Muon's, non-square)."""
    drawn = H.recipe(steps_per_layer=1, random_steps=2)
    rng = train_mps.steps_stream(drawn)
    assert {drawn.draw_steps(rng) for _ in range(6)} == {1, 2}  # both step counts are trained
    case = ("heun", "parallel", 1, optimizer, False, "float64")
    assert_within(H.check_training(*case, n_steps=6, random_steps=2, lever="all"), "float64")


def test_a_trained_checkpoint_gives_the_torch_loss_through_jax(tmp_path, monkeypatch):
    """levers.train with every lever (n_embd 32: D = 4 x 16, H = 64) writes a checkpoint; config_from_torch and
    params_from_torch take it (shortlist, levers and all), and in float64 its loss on a val batch is torch's."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 4000), ("val", 1000)):
        rng.integers(0, 50257, n).astype(np.uint16).tofile(data / f"{split}.bin")
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(data))
    monkeypatch.setenv("TRAIN_MPS_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "6")
    monkeypatch.delenv("TRAIN_MPS_SEED", raising=False)
    levers.train(levers.LeverRecipe(**H.CAPACITY_LEVERS["all"]))
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", map_location="cpu", weights_only=False)
    model = levers.model_from_args(ckpt["model_args"])
    model.load_state_dict(ckpt["model"], strict=True)
    model = model.double().eval()
    jconfig = jax_impl.config_from_torch(ckpt["model_args"], ckpt["model"])
    assert jconfig.shortlist and (jconfig.glu, jconfig.norm, jconfig.qk_norm) == ("swiglu", "rms", True)
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    val = np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64)[: 4 * 64 + 1]
    x, y = val[:-1].reshape(4, 64), val[1:].reshape(4, 64)
    with torch.no_grad():
        _, loss_t = model(torch.from_numpy(x), torch.from_numpy(y))
    _, loss_j = jax_impl.forward(params, jconfig, jax.numpy.asarray(x), jax.numpy.asarray(y))
    assert_within({"loss": H.max_abs(loss_j, loss_t)}, "float64")


# -- the checks can fail ----------------------------------------------------------------------------


def _rms_eps_1e6(name=None):
    return nn.RMSNorm(epsilon=1e-6, name=name)  # flax's default epsilon


def _rms_without_gain(name=None):
    return nn.RMSNorm(epsilon=1e-5, use_scale=False, name=name)


def _raw_logits_tanh_gelu(params, config, x, rows=None):
    logits = x @ params["wte"][:rows].T
    z = jax.nn.gelu(x @ params["head_up"]["kernel"], approximate=True)  # flax's and jax's default GELU
    return logits + z @ params["head_wide"]["kernel"][:, :rows]


def _raw_logits_mixing_logits(params, config, x, rows=None):
    h = jax.numpy.tanh(x @ params["head_mix"]["kernel"]).reshape(*x.shape[:-1], config.mos, config.n_embd)
    log_prior = jax.nn.log_softmax(x @ params["head_prior"]["kernel"], axis=-1)[..., None]
    return jax.nn.logsumexp(log_prior + h @ params["wte"][:rows].T, axis=-2)  # components' logits, not log-softmaxes


MUTANTS = {
    "rms epsilon 1e-6": ("all", lambda mp: mp.setattr(jax_model, "_rms_norm", _rms_eps_1e6)),
    "rms gain dropped": ("all", lambda mp: mp.setattr(jax_model, "_rms_norm", _rms_without_gain)),
    "geglu's tanh gelu": (
        "geglu",
        lambda mp: mp.setitem(jax_model.GATES, "geglu", lambda a: jax.nn.gelu(a, approximate=True)),
    ),
    "head_width's tanh gelu": ("head_width", lambda mp: mp.setattr(jax_model, "raw_logits", _raw_logits_tanh_gelu)),
    "mos mixing logits": ("mos", lambda mp: mp.setattr(jax_model, "raw_logits", _raw_logits_mixing_logits)),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_a_wrong_mirror_fails_the_check(mutant, monkeypatch):
    """The check of the canonical case goes over its tolerance on a mirror with one plausible mistake. jit caches
    traces per config: cleared before the mutant runs and after, so that neither sees the other's program."""
    lever, mutate = MUTANTS[mutant]
    case = ("forward", lever, "heun", "parallel", 1, False, "float64")
    jax.clear_caches()
    mutate(monkeypatch)
    try:
        diffs = H.check_capacity(*case)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    assert any(worst > tol("float64", q) for q, worst in diffs.items()), diffs
