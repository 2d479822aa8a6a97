"""Convergence order of every tableau and splitting, float64 on CPU (FORMULATION.md)."""

import numpy as np
import pytest
import torch

from model import GPT, TABLEAUX, GPTConfig

STEPS = [8, 16, 32, 64]  # errors stay far above float64 round-off at 64 steps (rk4: ~1e-9 relative)
SLOPE_TOL = 0.15
SPLITTING_ORDER = {"lie": 1, "strang": 2}


@pytest.fixture(scope="module")
def flow():
    """A fixed random 2-layer model, weights N(0, 0.1) so the flow is visibly nonlinear but smooth."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, bias=True)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    x0 = model.embed(torch.randint(0, 64, (2, 16)))

    def solve(solver, steps, splitting):
        model.set_integrator(solver, steps, splitting)
        with torch.no_grad():
            return model.integrate(x0)

    reference = solve("rk4", 256, "parallel")  # error ~1e-11, far below the 64-step errors
    return solve, reference


def fitted_order(solve, reference, solver, splitting):
    errors = [((solve(solver, n, splitting) - reference).norm() / reference.norm()).item() for n in STEPS]
    assert all(e > 1e-13 for e in errors), f"errors reach round-off: {errors}"
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]


@pytest.mark.parametrize("solver", list(TABLEAUX))
def test_parallel_splitting_keeps_the_solver_order(flow, solver):
    assert fitted_order(*flow, solver, "parallel") == pytest.approx(TABLEAUX[solver].order, abs=SLOPE_TOL)


@pytest.mark.parametrize("solver", ["euler", "heun", "bosh3", "rk4"])
@pytest.mark.parametrize("splitting", ["lie", "strang"])
def test_splitting_caps_the_order(flow, solver, splitting):
    # under lie even rk4 is first order; strang caps at two (euler inside strang stays first order)
    expected = min(TABLEAUX[solver].order, SPLITTING_ORDER[splitting])
    assert fitted_order(*flow, solver, splitting) == pytest.approx(expected, abs=SLOPE_TOL)
