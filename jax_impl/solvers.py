"""
Explicit Runge-Kutta methods for the JAX mirror, as diffrax solvers, and the splitting combinator.

Solvers are data, as on the torch side: each method is a diffrax solver class whose
`diffrax.ButcherTableau` *is* the method. Where diffrax ships the method (Euler, Midpoint, Heun,
Ralston, Bosh3, Tsit5, Dopri5) we use its class unchanged; the three it lacks (classic RK4, the RK4
3/8 rule, Kutta's third-order method) are `AbstractERK` subclasses below. These tableaux are written
here from the literature, independently of model.TABLEAUX; parity_tests compares the two.

Only tsit5 and dopri5 are `adaptive`: they carry a genuine embedded error estimate. The custom
tableaux carry `b_error = 0`, which a PIDController would silently read as "no error" and accept
any step (PARITY.md), so the model runs every non-adaptive method under ConstantStepSize only.

`SplitRK` is the one piece of stepping logic of our own. diffrax advances one vector field per
step; a lie or strang step alternates two fields (attention, MLP) inside the step, and the
regularizers need each stage's value and its own Hutchinson probe, which diffrax's ERK loop never
exposes (the vector field does not know its stage index). SplitRK is a diffrax solver that, per
step, runs the splitting's sub-steps in order:

  - unregularized: each sub-step is one `step` of the method's own diffrax solver on that field;
  - regularized: each sub-step is the same tableau stepped by a stage-exposed explicit stepper
    (the mirror of model.rk_step) that also accumulates the solver's own quadrature of the kinetic
    energy and of the Hutchinson Jacobian-Frobenius estimate, in the ODE state (x, K, J).

So every integration is one `diffrax.diffeqsolve` per layer with ConstantStepSize (t0=l, t1=l+1,
dt0=1/steps_per_layer); parallel splitting without regularizers hands the plain field F = A + M to
the diffrax solver directly, which is also the only place adaptive stepping and BacksolveAdjoint
are allowed.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from diffrax._local_interpolation import LocalLinearInterpolation, ThirdOrderHermitePolynomialInterpolation

# ---------------------------------------------------------------------------------------------
# The tableaux diffrax lacks. b_error = 0: valid under ConstantStepSize only (see module docstring).


def _fixed_step_tableau(a_lower, b_sol, c) -> diffrax.ButcherTableau:
    """A diffrax tableau for a method without an embedded error estimate (c without its leading 0;
    diffrax checks that the rows of a sum to c)."""
    return diffrax.ButcherTableau(
        a_lower=tuple(np.asarray(row, dtype=np.float64) for row in a_lower),
        b_sol=np.asarray(b_sol, dtype=np.float64),
        b_error=np.zeros(len(b_sol)),
        c=np.asarray(c, dtype=np.float64),
    )


class RK4(diffrax.AbstractERK):
    """Classic fourth-order Runge-Kutta (Kutta 1901): 4 stages, weights 1/6, 1/3, 1/3, 1/6.

    Not torchdiffeq's "rk4", which is the 3/8 rule (RK438 below)."""

    tableau: ClassVar[diffrax.ButcherTableau] = _fixed_step_tableau(
        a_lower=([1 / 2], [0, 1 / 2], [0, 0, 1]), b_sol=[1 / 6, 1 / 3, 1 / 3, 1 / 6], c=[1 / 2, 1 / 2, 1]
    )
    interpolation_cls: ClassVar = ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 4


class RK438(diffrax.AbstractERK):
    """Kutta's 3/8 rule: fourth order, 4 stages, weights 1/8, 3/8, 3/8, 1/8."""

    tableau: ClassVar[diffrax.ButcherTableau] = _fixed_step_tableau(
        a_lower=([1 / 3], [-1 / 3, 1], [1, -1, 1]), b_sol=[1 / 8, 3 / 8, 3 / 8, 1 / 8], c=[1 / 3, 2 / 3, 1]
    )
    interpolation_cls: ClassVar = ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 4


class Kutta3(diffrax.AbstractERK):
    """Kutta's third-order method: 3 stages, c = (0, 1/2, 1), weights 1/6, 2/3, 1/6."""

    tableau: ClassVar[diffrax.ButcherTableau] = _fixed_step_tableau(
        a_lower=([1 / 2], [-1, 2]), b_sol=[1 / 6, 2 / 3, 1 / 6], c=[1 / 2, 1]
    )
    interpolation_cls: ClassVar = ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 3


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Method:
    """A named explicit RK method: the diffrax solver class that integrates it, and its order."""

    name: str
    order: int
    solver_cls: type
    adaptive: bool = False  # genuine embedded error estimate: may run under a PIDController

    def solver(self) -> diffrax.AbstractSolver:
        return self.solver_cls()

    @property
    def coefficients(self) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...], tuple[float, ...]]:
        """(a, b, c) of the explicit stages, as in model.ButcherTableau (a row i has i entries).

        diffrax stores FSAL methods (bosh3, tsit5, dopri5) with one more stage that only evaluates
        f at the step's end for the next step (its weight is 0 and its row equals b); it is dropped
        here. diffrax.Euler is not an ERK and has no tableau: its one stage is written out."""
        if self.solver_cls is diffrax.Euler:
            return ((),), (1.0,), (0.0,)
        tab = self.solver_cls.tableau
        rows = [()] + [tuple(float(v) for v in row) for row in tab.a_lower]
        b = tuple(float(v) for v in tab.b_sol)
        c = (float(tab.c1),) + tuple(float(v) for v in tab.c)
        if tab.fsal:
            assert b[-1] == 0 and rows[-1] == b[:-1], f"{self.name}: unexpected FSAL layout"
            rows, b, c = rows[:-1], b[:-1], c[:-1]
        return tuple(rows), b, c

    @property
    def stages(self) -> int:
        return len(self.coefficients[1])

    @property
    def fsal(self) -> bool:
        return self.solver_cls is not diffrax.Euler and self.solver_cls.tableau.fsal


METHODS = {
    m.name: m
    for m in (
        Method("euler", 1, diffrax.Euler),
        Method("midpoint", 2, diffrax.Midpoint),
        Method("heun", 2, diffrax.Heun),
        Method("ralston", 2, diffrax.Ralston),
        Method("bosh3", 3, diffrax.Bosh3),
        Method("kutta3", 3, Kutta3),
        Method("rk4", 4, RK4),
        Method("rk4_38", 4, RK438),
        # beyond torch: adaptive pairs, PIDController on rtol/atol
        Method("tsit5", 5, diffrax.Tsit5, adaptive=True),
        Method("dopri5", 5, diffrax.Dopri5, adaptive=True),
    )
}
FIXED_STEP_METHODS = tuple(n for n, m in METHODS.items() if not m.adaptive)  # the torch solvers
ADAPTIVE_METHODS = tuple(n for n, m in METHODS.items() if m.adaptive)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown solver {name!r}; valid solvers: {', '.join(METHODS)}")
    return METHODS[name]


# Each splitting is a sequence of (sub-field, fraction of h) per step: the same data as
# model.SPLITTING_SCHEMES (parity_tests compares them).
SPLITTING_SCHEMES = {
    "lie": (("attn", 1.0), ("mlp", 1.0)),
    "strang": (("mlp", 0.5), ("attn", 1.0), ("mlp", 0.5)),
    "parallel": (("both", 1.0),),
}
SPLITTINGS = tuple(SPLITTING_SCHEMES)


def evals_per_step(method: Method, splitting: str, regularized: bool) -> dict:
    """Vector-field evaluations per step, per sub-field, for the path `integrate` takes.

    The stage-exposed stepper (regularized) evaluates the explicit stages only; a diffrax FSAL
    solver restarted for every sub-step (lie/strang, unregularized) also evaluates its FSAL stage,
    which is then thrown away."""
    per_step = {"attn": 0, "mlp": 0}
    restarted = splitting != "parallel" and not regularized
    per_sub = method.stages + (1 if (restarted and method.fsal) else 0)
    for field_name, _ in SPLITTING_SCHEMES[splitting]:
        for name in ("attn", "mlp") if field_name == "both" else (field_name,):
            per_step[name] += per_sub
    return per_step


# ---------------------------------------------------------------------------------------------
# The stage-exposed stepper (mirror of model._combine / model.rk_step)


def combine(x, h: float, coeffs, ks):
    """x + h * sum_i coeffs_i k_i with torch's exact operation order (model._combine): zero
    coefficients are skipped, a coefficient or h of exactly 1 multiplies by nothing."""
    acc = None
    for coef, k in zip(coeffs, ks):
        if coef == 0:
            continue
        term = k if coef == 1 else coef * k
        acc = term if acc is None else acc + term
    if acc is None:
        return x
    return x + (acc if h == 1 else h * acc)


def rk_step_with_quadrature(field: Callable, x, h: float, coefficients, probes=None):
    """One explicit RK step of size h for dx/dt = field(x), and its quadrature of the regularizers.

    Returns (x_next, kinetic, jacobian): kinetic = h sum_i b_i ||k_i||^2 / n_tok and, if `probes`
    (one Rademacher array shaped like x per stage) is given, jacobian = h sum_i b_i
    ||eps_i^T dfield/dx(x_i)||^2 / n_tok, else 0. Stages with b_i = 0 contribute nothing and
    consume no probe's value (as torch, which draws none for them)."""
    a, b, _ = coefficients
    n_tok = x.size // x.shape[-1]
    kinetic = jnp.zeros((), x.dtype)
    jacobian = jnp.zeros((), x.dtype)
    ks = []
    for i in range(len(b)):
        x_i = combine(x, h, a[i], ks)
        if probes is not None and b[i] != 0:
            k, vjp_fn = jax.vjp(field, x_i)
            (eps_j,) = vjp_fn(probes[i].astype(k.dtype))
            jacobian = jacobian + h * b[i] * jnp.sum(jnp.square(eps_j)) / n_tok
        else:
            k = field(x_i)
        ks.append(k)
        if b[i] != 0:
            kinetic = kinetic + h * b[i] * jnp.sum(jnp.square(k)) / n_tok
    return combine(x, h, b, ks), kinetic, jacobian


class SplitRK(diffrax.AbstractSolver):
    """A splitting of two fields (attention, MLP) composed with an explicit RK method, as a diffrax
    solver. Terms: MultiTerm(ODETerm(A), ODETerm(M)). Fixed steps of size `dt` only.

    The state y is the residual stream x. The solver state is (step counter, kinetic, jacobian):
    the counter picks this step's Hutchinson probes from args["probes"], shaped
    (steps, sub-steps, stages, *x.shape) in torch's draw order; kinetic and jacobian accumulate
    the regularizers' quadrature when `regularize` (read them with SaveAt(solver_state=True);
    RecursiveCheckpointAdjoint differentiates through them as through y). The fields are
    autonomous, so each delegated sub-step runs on a local clock [0, h_sub]: its control is then
    exactly the static sub-step size h_sub = dt * fraction, as torch's h."""

    method: Method = eqx.field(static=True)
    splitting: str = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    regularize: bool = eqx.field(static=True, default=False)
    jacobian: bool = eqx.field(static=True, default=False)

    term_structure: ClassVar = diffrax.MultiTerm[tuple[diffrax.AbstractTerm, diffrax.AbstractTerm]]
    interpolation_cls: ClassVar = LocalLinearInterpolation

    def order(self, terms):
        return {"lie": 1, "strang": min(2, self.method.order)}.get(self.splitting, self.method.order)

    def init(self, terms, t0, t1, y0, args):
        zero = jnp.zeros((), y0.dtype)
        return jnp.zeros((), jnp.int32), zero, zero

    def func(self, terms, t0, y0, args):
        attn, mlp = terms.terms
        return attn.vf(t0, y0, args) + mlp.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        attn, mlp = terms.terms
        scheme = SPLITTING_SCHEMES[self.splitting]
        step_index, kinetic, jacobian = solver_state
        x = y0
        if self.regularize:
            fields = {
                "attn": lambda x: attn.vf(t0, x, args),
                "mlp": lambda x: mlp.vf(t0, x, args),
                "both": lambda x: attn.vf(t0, x, args) + mlp.vf(t0, x, args),  # F = A + M
            }
            probes = None
            if self.jacobian:
                probes = jax.lax.dynamic_index_in_dim(args["probes"], step_index, axis=0, keepdims=False)
            for j, (field_name, fraction) in enumerate(scheme):
                x, dk, dj = rk_step_with_quadrature(
                    fields[field_name],
                    x,
                    self.dt * fraction,
                    self.method.coefficients,
                    None if probes is None else probes[j],
                )
                kinetic, jacobian = kinetic + dk, jacobian + dj
        else:
            # each sub-step is one step of the method's own diffrax solver on its field
            inner = self.method.solver()
            terms_by_name = {"attn": attn, "mlp": mlp}
            for field_name, fraction in scheme:
                term = terms_by_name[field_name]  # "both" never gets here: see model.integrate
                ts, te = jnp.zeros((), t0.dtype), jnp.asarray(self.dt * fraction, t0.dtype)
                x = inner.step(term, ts, te, x, args, inner.init(term, ts, te, x, args), False)[0]
        dense_info = dict(y0=y0, y1=x)
        return x, None, dense_info, (step_index + 1, kinetic, jacobian), diffrax.RESULTS.successful
