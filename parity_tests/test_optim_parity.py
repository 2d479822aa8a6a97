"""optax mirrors train_mps's optimization: schedule, AdamW + clipping, Muon, EMA, training steps."""

import jax
import numpy as np
import pytest
import torch

import train_mps
from jax_impl import optim
from parity_tests import harness as H
from parity_tests.tolerances import tol


def assert_within(diffs: dict, dtype: str):
    for quantity, worst in diffs.items():
        assert worst <= tol(dtype, quantity), f"{quantity}: {worst:.3e} > {tol(dtype, quantity):.0e}"


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_lr_at_every_step(schedule):
    assert_within(H.check_lr(schedule), "float64")


@pytest.mark.parametrize("optimizer, ns", [("adamw", "-"), ("muon", "float64"), ("muon", "bfloat16")])
def test_twenty_optimizer_steps_from_identical_gradients(optimizer, ns):
    assert_within(H.check_optimizer(optimizer, ns=ns), "float64")


def test_ema():
    assert_within(H.check_ema(), "float64")


@pytest.mark.parametrize("case", H.TRAINING_GRID, ids=lambda c: "-".join(map(str, c)))
def test_five_training_steps(case):
    assert_within(H.check_training(*case), case[-1])


def test_training_steps_under_drawn_step_counts():
    """Recipe.random_steps (issue #14): heun/parallel with 1..3 steps per layer drawn per step, the same draws on
    both sides; 8 steps so that every count is drawn (checked)."""
    drawn = H.recipe(steps_per_layer=1, random_steps=3)
    rng = train_mps.steps_stream(drawn)
    assert {drawn.draw_steps(rng) for _ in range(8)} == {1, 2, 3}
    assert_within(
        H.check_training("heun", "parallel", 1, "adamw", False, "float64", n_steps=8, random_steps=3), "float64"
    )


def test_jax_training_refuses_drawn_steps_under_an_adaptive_solver():
    from jax_impl.train import train

    with pytest.raises(ValueError, match="random-steps"):
        train(solver="tsit5", splitting="parallel", random_steps=2)


def test_clipping_is_torchs():
    """coef = max / (norm + 1e-6), clamped to 1, always multiplied (optax's differs below max)."""
    g = [torch.full((3,), 0.5, dtype=torch.float64), torch.full((2, 2), -0.25, dtype=torch.float64)]
    for scale in (0.1, 1.0, 10.0):
        tg = [t.clone().mul_(scale).requires_grad_() for t in g]
        for t in tg:
            t.grad = t.detach().clone()
        torch.nn.utils.clip_grad_norm_(tg, 1.0)
        out, _ = optim.clip_by_global_norm_torch(1.0).update([H.jnp_(t.detach()) for t in tg], None)
        for a, t in zip(out, tg):
            np.testing.assert_array_equal(np.asarray(a), t.grad.numpy())


def test_decay_mask_and_muon_labels_mirror_torch_groups():
    """Decay on >= 2-D (nanoGPT's groups); Muon on 2-D '.h.' matrices (train_mps.make_optimizers)."""
    import jax_impl

    tconfig, jconfig = H.configs("euler", "lie", 1)
    model = H.torch_gpt(tconfig, "float64")
    named = dict(model.named_parameters())
    named["lm_head.weight"] = named["transformer.wte.weight"]

    def torch_rule(rule):  # a params-shaped tree of 0/1 from a rule on torch's (name, parameter)
        flags = {n: torch.full(p.shape, float(rule(n, p)), dtype=torch.float64) for n, p in named.items()}
        return jax_impl.params_from_torch(flags, jconfig)

    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    pairs = [
        (optim.decay_mask(params), torch_rule(lambda n, p: p.dim() >= 2)),
        (optim.muon_labels(params), torch_rule(lambda n, p: p.dim() == 2 and ".h." in n)),
    ]
    for got, want in pairs:
        got = jax.tree_util.tree_map(lambda g: float(g is True or g == "muon"), got)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            assert np.all(np.asarray(w) == g)
