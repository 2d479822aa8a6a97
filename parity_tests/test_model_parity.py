"""The JAX model computes what model.py computes: tableaux, config, weights, logits, loss,
gradients, regularizers, NFE. Grids and checks live in harness.py; tolerances in tolerances.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_impl
import levers
import model as torch_model
from parity_tests import harness as H
from parity_tests.tolerances import tol


def assert_within(diffs: dict, dtype: str):
    for quantity, worst in diffs.items():
        assert worst <= tol(dtype, quantity), f"{quantity}: {worst:.3e} > {tol(dtype, quantity):.0e}"


# -- solvers as data ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", H.SOLVERS)
def test_tableau_equals_torch(name):
    assert_within(H.check_tableau(name), "float64")


def test_every_torch_solver_and_splitting_is_mirrored():
    assert set(torch_model.TABLEAUX) == set(jax_impl.FIXED_STEP_METHODS)
    assert torch_model.SPLITTING_SCHEMES == jax_impl.SPLITTING_SCHEMES


def test_custom_tableaux_are_never_adaptive():
    """b_error = 0 would make a PIDController accept every step (PARITY.md): only tsit5 and dopri5,
    diffrax's own pairs, run adaptively."""
    assert jax_impl.ADAPTIVE_METHODS == ("tsit5", "dopri5")
    for name in ("rk4", "rk4_38", "kutta3"):
        tableau = jax_impl.get_method(name).solver_cls.tableau
        assert not jax_impl.get_method(name).adaptive and not tableau.b_error.any()


@pytest.mark.parametrize(
    "bad",
    [
        {"solver": "tsit5", "splitting": "lie"},  # a split step's error is not the pair's estimate
        {"solver": "dopri5", "splitting": "parallel", "kinetic_energy": 0.1},  # per-stage quadrature
        {"adjoint": "backsolve", "splitting": "strang"},
        {"adjoint": "backsolve", "splitting": "parallel", "jacobian_frobenius": 0.1},
        {"adjoint": "forward"},
        {"rtol": 0.0},
    ],
)
def test_jax_only_options_are_validated(bad):
    with pytest.raises(ValueError):
        jax_impl.GPTConfig(**bad)


# -- config ---------------------------------------------------------------------------------------


def test_config_fields_and_defaults_match_torch():
    """Torch's fields in torch's order, but for `shortlist` (the ids) where torch has shortlist_size
    (a property of the JAX config: the ids' count)."""
    t = {f.name: f.default for f in dataclasses.fields(levers.LeverConfig)}
    j_names = [f.name for f in dataclasses.fields(jax_impl.GPTConfig)]
    assert tuple(t) == jax_impl.TORCH_CONFIG_FIELDS
    assert j_names[: len(t)] == ["shortlist" if k == "shortlist_size" else k for k in t]
    assert jax_impl.torch_config_kwargs(jax_impl.GPTConfig()) == t  # every default
    with pytest.raises(dataclasses.FrozenInstanceError):
        jax_impl.GPTConfig().n_layer = 3


@pytest.mark.parametrize(
    "bad",
    [
        {"solver": "rk5"},
        {"splitting": "yoshida"},
        {"steps_per_layer": 0},
        {"steps_per_layer": 1.5},
        {"n_embd": 30, "n_head": 4},
        {"kinetic_energy": -1.0},
        {"jacobian_frobenius": -0.1},
        {"steps_per_layer": 2.0},  # a float, even a whole one
        {"n_head": 0},
        {"n_layer": True},
        {"block_size": 0},
        {"dropout": 1.0},
        {"kinetic_energy": float("nan")},
        {"unseen_mass": float("inf")},
        {"ngram_buckets": -1},
        {"token_noise": 1.0},
        {"head_width": 2.0},
        {"mlp_width": -1},  # issue #35's capacity levers
        {"mlp_width": 100},  # not a multiple of n_head (12)
        {"mlp_width": 96.0},
        {"head_dim": True},
        {"head_dim": -8},
        {"glu": "reglu"},
        {"glu": None},
        {"norm": "batch"},
        {"qk_norm": 1},
    ],
)
def test_config_is_validated_like_torch(bad):
    with pytest.raises(ValueError) as t_err:
        levers.LeverConfig(**bad)
    with pytest.raises(ValueError) as j_err:
        jax_impl.GPTConfig(**bad)
    if "solver" not in bad:  # the JAX list of valid solvers is longer
        assert str(j_err.value) == str(t_err.value)


# (JAX kwargs, torch kwargs or None where only set_shortlist can check it, same message?)
SHORTLIST_CONFIGS = [
    ({"shortlist": (1, 2)}, {"shortlist_size": 2}, True),  # unseen_mass 0 with a shortlist
    ({"shortlist": (1, 2), "unseen_mass": 1.0}, {"shortlist_size": 2, "unseen_mass": 1.0}, True),
    ({"unseen_mass": 0.1}, {"unseen_mass": 0.1}, False),  # a tail mass without a shortlist
    ({"shortlist": tuple(range(128)), "unseen_mass": 0.1}, {"shortlist_size": 128, "unseen_mass": 0.1}, False),
    ({"shortlist": (3, 3), "unseen_mass": 0.1}, None, False),
    ({"shortlist": (3, 128), "unseen_mass": 0.1}, None, False),
    ({"shortlist": (-1, 3), "unseen_mass": 0.1}, None, False),
    ({"shortlist": (1.5, 3), "unseen_mass": 0.1}, None, False),
]


@pytest.mark.parametrize("bad_jax, bad_torch, same_message", SHORTLIST_CONFIGS)
def test_shortlist_config_is_validated(bad_jax, bad_torch, same_message):
    with pytest.raises(ValueError) as j_err:
        jax_impl.GPTConfig(**{**H.TINY, **bad_jax})
    if bad_torch is not None:
        with pytest.raises(ValueError) as t_err:
            levers.LeverConfig(**{**H.TINY, **bad_torch})
        if same_message:
            assert str(j_err.value) == str(t_err.value)


def test_shortlist_config_comes_from_torch_and_stays_static():
    model, jconfig = H.shortlist_gpt("euler", "lie", 1, "float64")
    assert jconfig.shortlist == tuple(model.row_tokens.tolist()) != tuple(sorted(jconfig.shortlist))  # row order
    assert jconfig.shortlist_size == 40 and jconfig.embedding_rows == 41
    assert jax_impl.torch_config_kwargs(jconfig) == dataclasses.asdict(model.config)  # the inverse
    with pytest.raises(ValueError, match="row_tokens"):
        jax_impl.config_from_torch(model.config)  # the ids are in the state_dict only
    # any integer sequence becomes a tuple of ints: hashable, equal configs hash equal (jit's static argument)
    again = dataclasses.replace(jconfig, shortlist=np.array(jconfig.shortlist))
    assert again == jconfig and hash(again) == hash(jconfig) and type(again.shortlist[0]) is int


# -- weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip_is_exact(bias):
    tconfig, jconfig = H.configs("euler", "lie", 1, bias=bias)
    model = H.torch_gpt(tconfig, "float64")
    params, back = H.round_trip(model, jconfig)
    assert back["lm_head.weight"] is back["transformer.wte.weight"]
    fresh = levers.LeverGPT(tconfig).double()
    fresh.load_state_dict(back, strict=True)
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()
    kernel = params["h"]["attn"]["c_attn"]["kernel"]
    assert kernel.shape == (tconfig.n_layer, tconfig.n_embd, 3 * tconfig.n_embd)  # (layers, in, out)


def test_shortlist_state_dict_round_trip_is_exact():
    """torch -> JAX -> torch: wte (k + 1, C) in params, the ids in the config only, both buffers back
    in torch's key order, and a strict load into a fresh model restores the shortlist."""
    model, jconfig = H.shortlist_gpt("euler", "lie", 1, "float64")
    sd = model.state_dict()
    params = jax_impl.params_from_torch(sd, jconfig)
    assert set(params) == {"wte", "wpe", "h", "ln_f"} and params["wte"].shape == (41, H.TINY["n_embd"])
    back = jax_impl.params_to_torch(params, jconfig)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    fresh = levers.LeverGPT(model.config).double()  # its buffers start as the shortlist 0..k-1
    fresh.load_state_dict(back, strict=True)
    assert torch.equal(fresh.row_tokens, model.row_tokens) and torch.equal(fresh.token_rows, model.token_rows)


def _swap_two_rows(sd, jconfig):
    sd["row_tokens"] = sd["row_tokens"][[1, 0, *range(2, jconfig.shortlist_size)]]


def _break_inverse(sd, jconfig):
    outside = next(i for i in range(jconfig.vocab_size) if i not in jconfig.shortlist)
    sd["token_rows"] = sd["token_rows"].clone()
    sd["token_rows"][outside] = 0  # an outside token mapped to the first row


@pytest.mark.parametrize(
    "corrupt, name",
    [
        (_swap_two_rows, "row_tokens"),
        (_break_inverse, "token_rows"),
        (lambda sd, c: sd.pop("token_rows"), "token_rows"),
        (lambda sd, c: sd.pop("row_tokens"), "row_tokens"),
    ],
)
def test_shortlist_conversion_checks_the_buffers(corrupt, name):
    model, jconfig = H.shortlist_gpt("euler", "lie", 1, "float64")
    sd = dict(model.state_dict())
    corrupt(sd, jconfig)
    with pytest.raises(AssertionError, match=name):
        jax_impl.params_from_torch(sd, jconfig)


def test_shortlist_conversion_rejects_another_shortlist_or_none():
    model, jconfig = H.shortlist_gpt("euler", "lie", 1, "float64")
    sd = model.state_dict()
    reordered = dataclasses.replace(jconfig, shortlist=jconfig.shortlist[::-1])
    with pytest.raises(AssertionError, match="differs from the one config.shortlist defines"):
        jax_impl.params_from_torch(sd, reordered)
    full = dataclasses.replace(jconfig, shortlist=(), unseen_mass=0.0)
    with pytest.raises(AssertionError, match="wte"):  # (k + 1, C) is no full-softmax embedding
        jax_impl.params_from_torch(sd, full)


def test_conversion_rejects_a_wrong_shape():
    tconfig, jconfig = H.configs("euler", "lie", 1)
    sd = H.torch_gpt(tconfig, "float64").state_dict()
    sd["transformer.h.1.mlp.c_fc.weight"] = sd["transformer.h.1.mlp.c_fc.weight"][:, :-1]
    with pytest.raises(AssertionError, match="c_fc"):
        jax_impl.params_from_torch(sd, jconfig)


# -- forward and backward -------------------------------------------------------------------------


def _id(case):
    return "-".join(map(str, case))


@pytest.mark.parametrize("case", H.FORWARD_GRID + H.FORWARD_GRID_F32, ids=_id)
def test_logits_loss_and_gradients(case):
    assert_within(H.check_forward(*case), case[-1])


@pytest.mark.parametrize("case", [("rk4", "strang", 2, "float64")], ids=_id)
def test_inference_returns_last_position_logits(case):
    assert_within(H.check_inference_logits(*case), case[-1])


@pytest.mark.parametrize("case", H.SHORTLIST_GRID, ids=_id)
def test_shortlist_loss_gradients_and_log_probabilities(case):
    assert_within(H.check_shortlist(*case), case[-1])


@pytest.mark.parametrize("case", H.REGULARIZER_GRID, ids=_id)
def test_regularizers_with_the_same_probes(case):
    assert_within(H.check_regularizers(*case), case[-1])


@pytest.mark.parametrize("case", H.STATS_GRID, ids=_id)
def test_logits_loss_and_nfe_from_solver_statistics(case):
    """NFE counted from diffrax's step statistics equals jax_impl.nfe, and torch's count except for
    diffrax's FSAL stage (bosh3: one extra f per solve, or per sub-step when restarted by a split)."""
    diffs, info = H.check_forward_stats(*case)
    assert_within(diffs, case[-1])
    counted, formula, torch_nfe = info["nfe"]
    assert counted == formula
    if not jax_impl.get_method(case[0]).fsal:
        assert counted == torch_nfe


@pytest.mark.parametrize("lever", [{"ngram_buckets": 8}, {"token_noise": 0.1}])
def test_torch_only_levers_are_refused_by_the_jax_forward(lever):
    """Issue #16's input levers are torch-only so far (head_width is mirrored: test_capacity_parity): the JAX config
    holds them (checkpoints convert), and the forward says it cannot run them instead of silently running another
    model."""
    config = jax_impl.GPTConfig(**{**H.TINY, **lever})
    params = jax_impl.init_params(jax.random.PRNGKey(0), config)
    with pytest.raises(NotImplementedError, match="not mirrored in JAX yet"):
        jax_impl.forward(params, config, jnp.zeros((1, 4), jnp.int32))
