"""Convergence order of every JAX solver, as FORMULATION.md asks of the torch side: parallel
splitting, a fixed random model in float64, error of x(L) against a 512-step rk4 reference,
fitted log-log slope within tolerances 'order' of the method's order; strang shows 2 and lie 1
whatever the inner solver. Beyond torch: adaptive solvers meet their tolerance, BacksolveAdjoint
agrees with backprop to the solver's accuracy. (JAX only.)"""

import jax
import jax.numpy as jnp
import pytest

import jax_impl
from parity_tests import harness as H
from parity_tests.tolerances import tol


@pytest.mark.parametrize("solver", jax_impl.FIXED_STEP_METHODS)
def test_order_parallel(solver):
    diffs, errors = H.check_order(solver)
    assert diffs["order"] <= tol("float64", "order"), f"{solver}: {H.order_slope(errors):.3f} from {errors}"


@pytest.mark.parametrize("splitting", ["lie", "strang"])
def test_order_of_splittings_with_rk4(splitting):
    """A fourth-order inner solver does not lift a splitting's order (model.py docstring)."""
    diffs, errors = H.check_splitting_order(splitting)
    assert diffs["order"] <= tol("float64", "order"), f"{splitting}: {H.order_slope(errors):.3f} from {errors}"


@pytest.mark.parametrize("solver", jax_impl.ADAPTIVE_METHODS)
def test_adaptive_solver_meets_its_tolerance(solver):
    params, x0 = H.order_problem()
    ref = H.order_reference()
    errs, steps = [], []
    for rtol in (1e-6, 1e-10):  # this flow is smooth: looser tolerances all take 2 steps
        config = H.order_config(solver=solver, rtol=rtol, atol=rtol * 1e-2, max_steps_per_layer=512)
        x, _, num_steps = jax.jit(jax_impl.integrate, static_argnames="config")(params["h"], config, x0)
        errs.append(float(jnp.max(jnp.abs(x - ref)) / jnp.max(jnp.abs(ref))))
        steps.append(int(num_steps))
    assert errs[1] < errs[0] and errs[1] < 1e-8, errs
    assert steps[1] > steps[0], steps


def test_backsolve_adjoint_matches_backprop_to_solver_accuracy():
    params, x0 = H.order_problem()
    grads = {}
    for adjoint in ("recursive", "backsolve"):
        config = H.order_config(steps_per_layer=4, adjoint=adjoint)
        loss = lambda p, c=config: jnp.sum(jnp.square(jax_impl.integrate(p, c, x0)[0]))
        grads[adjoint] = jax.jit(jax.grad(loss))(params["h"])
    assert H.tree_max_rel(grads["backsolve"], grads["recursive"]) < 1e-3
