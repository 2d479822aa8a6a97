"""The JAX model computes what model.py computes: tableaux, config, weights, logits, loss,
gradients, regularizers, NFE. Grids and checks live in harness.py; tolerances in tolerances.py."""

import dataclasses

import pytest
import torch

import jax_impl
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
    t = {f.name: f.default for f in dataclasses.fields(torch_model.GPTConfig)}
    j = {f.name: f.default for f in dataclasses.fields(jax_impl.GPTConfig)}
    assert tuple(t) == jax_impl.TORCH_CONFIG_FIELDS
    assert {k: j[k] for k in t} == t
    assert dataclasses.fields(jax_impl.GPTConfig)[0].name == "block_size"
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
    ],
)
def test_config_is_validated_like_torch(bad):
    with pytest.raises(ValueError) as t_err:
        torch_model.GPTConfig(**bad)
    with pytest.raises(ValueError) as j_err:
        jax_impl.GPTConfig(**bad)
    if "solver" not in bad:  # the JAX list of valid solvers is longer
        assert str(j_err.value) == str(t_err.value)


# -- weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip_is_exact(bias):
    tconfig, jconfig = H.configs("euler", "lie", 1, bias=bias)
    model = H.torch_gpt(tconfig, "float64")
    sd = model.state_dict()
    params = jax_impl.params_from_torch(sd, jconfig)
    back = jax_impl.params_to_torch(params, jconfig)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    assert back["lm_head.weight"] is back["transformer.wte.weight"]
    fresh = torch_model.GPT(tconfig).double()
    fresh.load_state_dict(back, strict=True)
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()
    kernel = params["h"]["attn"]["c_attn"]["kernel"]
    assert kernel.shape == (tconfig.n_layer, tconfig.n_embd, 3 * tconfig.n_embd)  # (layers, in, out)


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
