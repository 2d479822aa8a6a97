"""
Shared machinery of the parity suite: build the same model on both sides, run one check, return
its worst differences. Tests assert them against tolerances.TOLERANCES; report.py tabulates them.

Every check returns {quantity: worst difference} (quantities as in tolerances.py). The grids below
are the parametrizations, chosen so the suite stays within its budget: jit compilation dominates
(every (solver, splitting, steps, dtype) is one XLA compile of a diffrax solve and its gradient),
so the float64 cross product covers every solver x splitting at steps 1 and each splitting at
steps 2, and float32 a subset.

Needs x64 (conftest.py and report.py enable it before any array exists).
"""

from contextlib import contextmanager
from dataclasses import replace
from functools import cache, lru_cache, partial

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import jax_impl
import levers
import model as torch_model
import train_mps
from jax_impl import optim as jax_optim
from jax_impl.model import Block, loss_terms

# tiny shapes: compile time, not FLOPs, is the budget
TINY = dict(block_size=16, vocab_size=128, n_layer=2, n_head=2, n_embd=16, bias=True)
BATCH, SEQ = 2, 8
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}

SOLVERS = tuple(torch_model.TABLEAUX)  # the eight torch solvers
SPLITTINGS = torch_model.SPLITTINGS
FORWARD_GRID = [(s, sp, 1, "float64") for s in SOLVERS for sp in SPLITTINGS] + [("rk4_38", "lie", 2, "float64")]
FORWARD_GRID_F32 = [("euler", "lie", 1, "float32"), ("bosh3", "strang", 1, "float32")]
# forward only (logits, loss and the NFE from diffrax's statistics): more steps per layer, one
# compile each instead of a gradient's ~3x; with FORWARD_GRID and REGULARIZER_GRID every path
# (direct diffrax solve, delegated split sub-steps, regularized stepper) runs at steps 2
STATS_GRID = [("bosh3", "strang", 2, "float64"), ("rk4", "parallel", 2, "float64"), ("heun", "lie", 3, "float64")]
# regularized: midpoint has b_1 = 0 (torch draws no probe there), steps 2 exercises the step
# counter that picks the probes, parallel integrates F = A + M through the stage-exposed stepper
REGULARIZER_GRID = [
    ("midpoint", "lie", 1, "float64"),
    ("heun", "strang", 2, "float64"),
    ("ralston", "parallel", 1, "float32"),
]
# shortlist softmax (model.GPTConfig.shortlist_size): k of a smaller vocabulary, so that a batch() of
# 16 tokens holds inputs and targets on both sides of the shortlist; the head does not depend on the
# integrator, so two float64 cases and the float32 one
SHORTLIST = dict(vocab_size=64, shortlist_size=40, unseen_mass=0.05)
SHORTLIST_GRID = [("euler", "lie", 1, "float64"), ("rk4", "strang", 1, "float64"), ("euler", "lie", 1, "float32")]
# issue #35's capacity levers (levers.LeverConfig; the output layer's head_width is issue #16's), each alone and all
# together, on TINY (n_embd 16, 2 heads: nanoGPT's widths are H = 64, hs = 8). The widths differ from those, so a
# mirror that ignored a field fails the conversion.
CAPACITY_LEVERS = {
    "mlp_width": dict(mlp_width=48),
    "geglu": dict(glu="geglu"),
    "swiglu": dict(glu="swiglu"),
    "head_dim": dict(head_dim=12),
    "rms": dict(norm="rms"),
    "qk_norm": dict(qk_norm=True),
    "head_width": dict(head_width=12),  # issue #16's output features, the output layer's capacity lever
    "mos": dict(mos=3),  # the output layer as a mixture of softmaxes
    "all": dict(mlp_width=64, head_dim=16, glu="swiglu", norm="rms", qk_norm=True, head_width=12, mos=3),
}
# (check, lever, solver, splitting, steps, bias, dtype). Every lever under the canonical recipe's integrator and
# bias (heun, parallel, 1 step, no bias: torch integrates mlp_width and head_dim by Block.fused_field there); all of
# them together also at the 2 steps its random_steps draws, under the shortlist head (the canonical softmax), under
# nanoGPT's block (euler, lie) and strang with biases, and with both regularizers (second order through the norms)
CAPACITY_GRID = [("forward", lever, "heun", "parallel", 1, False, "float64") for lever in CAPACITY_LEVERS] + [
    ("forward", "all", "heun", "parallel", 2, False, "float64"),
    ("forward", "all", "euler", "lie", 1, True, "float64"),
    ("forward", "all", "rk4", "strang", 1, True, "float64"),
    ("shortlist", "all", "heun", "parallel", 2, False, "float64"),
    ("regularizers", "all", "heun", "strang", 1, True, "float64"),
    ("forward", "all", "heun", "parallel", 1, False, "float32"),  # within TOLERANCES["float32"] (a test shows why)
]


# ---------------------------------------------------------------------------------------------
# differences


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(_np(a) - _np(b)))) if _np(b).size else 0.0


def max_rel(a, b) -> float:
    """max |a - b| / max |b| (0 when both are all zero)."""
    a, b = _np(a), _np(b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    err = float(np.max(np.abs(a - b))) if b.size else 0.0
    return err / scale if scale > 0 else err


def tree_max_rel(jax_tree, torch_tree) -> float:
    """Worst per-tensor relative difference between two params-shaped pytrees."""
    errs = jax.tree_util.tree_map(max_rel, jax_tree, torch_tree)
    return max(jax.tree_util.tree_leaves(errs))


# ---------------------------------------------------------------------------------------------
# building both sides


def configs(solver, splitting, steps, **overrides):
    kw = {**TINY, "solver": solver, "splitting": splitting, "steps_per_layer": steps, **overrides}
    return levers.LeverConfig(**kw), jax_impl.GPTConfig(**kw)


def torch_gpt(tconfig, dtype: str, seed: int = 0):
    torch.manual_seed(seed)
    return levers.LeverGPT(tconfig).to(TORCH_DTYPES[dtype])


@torch.no_grad()
def perturb(model, seed: int = 0, scale: float = 0.1):
    """Every parameter moved by scale * N(0, 1), on its own random stream (as model.fused_field_agrees probes): at init
    every norm's gain is 1 and every bias 0, so a mirror that dropped a gain or a bias would still agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def batch(vocab: int = TINY["vocab_size"], seed: int = 0, b: int = BATCH, t: int = SEQ):
    g = torch.Generator().manual_seed(1000 + seed)
    idx = torch.randint(0, vocab, (b, t), generator=g)
    targets = torch.randint(0, vocab, (b, t), generator=g)
    targets[0, -1] = -1  # one ignored target: ignore_index=-1 semantics
    return idx, targets


def round_trip(model, jconfig):
    """torch -> JAX -> torch: (the JAX params, the state dict back), every tensor equal in torch's key order."""
    sd = model.state_dict()
    params = jax_impl.params_from_torch(sd, jconfig)
    back = jax_impl.params_to_torch(params, jconfig)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    return params, back


def jnp_(t: torch.Tensor):
    return jnp.asarray(t.detach().cpu().numpy())


def torch_grads_as_params(model, jconfig):
    """The torch gradients mapped onto the JAX params pytree (lm_head shares wte's gradient; a
    shortlist's buffers go along for params_from_torch's checks)."""
    grads = {n: p.grad for n, p in model.named_parameters()}
    grads["lm_head.weight"] = grads["transformer.wte.weight"]
    return jax_impl.params_from_torch({**dict(model.named_buffers()), **grads}, jconfig)


def shortlist_gpt(solver, splitting, steps, dtype: str, seed: int = 0, **overrides):
    """A torch shortlist model and its JAX config (config_from_torch: the ids from row_tokens). The
    shortlist is a random permutation's first k ids, so rows and ids differ and are not sorted."""
    tconfig = levers.LeverConfig(
        **{**TINY, **SHORTLIST, "solver": solver, "splitting": splitting, "steps_per_layer": steps, **overrides}
    )
    model = torch_gpt(tconfig, dtype, seed)
    ids = torch.randperm(tconfig.vocab_size, generator=torch.Generator().manual_seed(seed))[: tconfig.shortlist_size]
    model.set_shortlist(ids)
    return model, jax_impl.config_from_torch(model.config, model.state_dict())


@contextmanager
def torch_probes(probes):
    """Make torch's Hutchinson draws return `probes` (torch tensors, in draw order).

    model._hutchinson_sq draws eps = torch.randint_like(k, 0, 2).mul_(2).sub_(1); the stand-in
    returns (probe + 1) / 2, so eps is the probe and the rest of torch's code runs unchanged.
    Yields the iterator; the caller asserts it is exhausted."""
    it = iter(probes)
    real = torch.randint_like

    def fake(k, low, high, **kwargs):
        assert (low, high) == (0, 2), "not the Hutchinson draw"
        eps = next(it)
        assert tuple(eps.shape) == tuple(k.shape)
        return ((eps + 1) / 2).to(k.dtype)

    torch.randint_like = fake
    try:
        yield it
    finally:
        torch.randint_like = real


def exhausted(it) -> bool:
    return next(it, None) is None


# ---------------------------------------------------------------------------------------------
# model checks


@partial(jax.jit, static_argnames="config")
def _jax_loss_logits_grads(params, config, idx, targets):
    def f(p):
        logits, loss = jax_impl.forward(p, config, idx, targets)
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, logits, grads


def check_forward(solver, splitting, steps, dtype) -> dict:
    """Logits (all positions), loss and every parameter's gradient."""
    tconfig, jconfig = configs(solver, splitting, steps)
    return forward_diffs(torch_gpt(tconfig, dtype), jconfig)


def forward_diffs(model, jconfig) -> dict:
    """check_forward's comparison of a torch model and its JAX config, from the model's weights."""
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    idx, targets = batch()
    logits_t, loss_t = model(idx, targets)
    loss_t.backward()
    loss_j, logits_j, grads_j = _jax_loss_logits_grads(params, jconfig, jnp_(idx), jnp_(targets))
    return {
        "logits": max_abs(logits_j, logits_t),
        "loss": max_abs(loss_j, loss_t),
        "grads": tree_max_rel(grads_j, torch_grads_as_params(model, jconfig)),
    }


def check_forward_stats(solver, splitting, steps, dtype) -> tuple:
    """Logits and loss through forward_with_stats, and its NFE: (diffs, {"nfe": (jax, formula,
    torch)}). The formula is jax_impl.nfe; torch's model.GPT.nfe differs only by diffrax's FSAL
    stage (one more f per solve, or per sub-step when a split restarts the solver)."""
    tconfig, jconfig = configs(solver, splitting, steps)
    model = torch_gpt(tconfig, dtype).eval()
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    idx, targets = batch()
    with torch.no_grad():
        logits_t, loss_t = model(idx, targets)
    logits_j, loss_j, stats = jax_impl.forward_with_stats(params, jconfig, jnp_(idx), jnp_(targets))
    assert int(stats["num_steps"]) == jconfig.n_layer * jconfig.steps_per_layer
    info = {"nfe": (int(stats["nfe"]), sum(jax_impl.nfe(jconfig).values()), sum(model.nfe().values()))}
    return {"logits": max_abs(logits_j, logits_t), "loss": max_abs(loss_j, loss_t)}, info


def check_inference_logits(solver, splitting, steps, dtype) -> dict:
    """targets=None: logits of the last position only, shape (b, 1, vocab), loss None."""
    tconfig, jconfig = configs(solver, splitting, steps)
    model = torch_gpt(tconfig, dtype).eval()
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    idx, _ = batch()
    with torch.no_grad():
        logits_t, loss_t = model(idx)
    logits_j, loss_j = jax_impl.forward(params, jconfig, jnp_(idx))
    assert loss_t is None and loss_j is None
    assert tuple(logits_j.shape) == tuple(logits_t.shape) == (BATCH, 1, TINY["vocab_size"])
    return {"logits": max_abs(logits_j, logits_t)}


def check_shortlist(solver, splitting, steps, dtype) -> dict:
    """The shortlist head: the loss (inputs and targets inside and outside the shortlist, one target
    -1), every parameter's gradient (wte's shared row k gets its gradient from the inputs only), and
    inference's logits over the whole vocabulary (b, 1, vocab; log-probabilities up to one constant)."""
    return shortlist_diffs(*shortlist_gpt(solver, splitting, steps, dtype))


def shortlist_diffs(model, jconfig) -> dict:
    """check_shortlist's comparison of a torch shortlist model and its JAX config, from the model's weights."""
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    idx, targets = batch(vocab=jconfig.vocab_size)
    outside = ~torch.isin(targets, model.row_tokens) & (targets >= 0)
    assert outside.any() and (~outside & (targets >= 0)).any() and (targets == -1).any()
    assert (~torch.isin(idx, model.row_tokens)).any() and torch.isin(idx, model.row_tokens).any()
    logits_t, loss_t = model(idx, targets)
    loss_t.backward()
    loss_j, logits_j, grads_j = _jax_loss_logits_grads(params, jconfig, jnp_(idx), jnp_(targets))
    # nanoGPT's contract: the (b, t, vocab) logits with the loss, whose cross-entropy is the loss
    assert tuple(logits_t.shape) == tuple(logits_j.shape) == (*targets.shape, jconfig.vocab_size)
    ce_t = F.cross_entropy(logits_t.detach().view(-1, logits_t.size(-1)), targets.view(-1), ignore_index=-1)
    with torch.no_grad():
        logp_t, none_t = model.eval()(idx)
    logp_j, none_j = jax_impl.forward(params, jconfig, jnp_(idx))
    assert none_t is None and none_j is None
    assert tuple(logp_j.shape) == tuple(logp_t.shape) == (BATCH, 1, jconfig.vocab_size)
    return {
        "loss": max(max_abs(loss_j, loss_t), max_abs(ce_t, loss_t)),
        "grads": tree_max_rel(grads_j, torch_grads_as_params(model, jconfig)),
        "logits": max(max_abs(logp_j, logp_t), max_abs(logits_j, logits_t)),
    }


@partial(jax.jit, static_argnames="config")
def _jax_regularized(params, config, idx, targets, probes):
    (total, (loss, terms)), grads = jax.value_and_grad(loss_terms, has_aux=True)(params, config, idx, targets, probes)
    return total, loss, terms, grads


REGULARIZER_WEIGHTS = dict(kinetic_energy=0.3, jacobian_frobenius=0.2)


def check_regularizers(
    solver,
    splitting,
    steps,
    dtype,
    kinetic_energy=REGULARIZER_WEIGHTS["kinetic_energy"],
    jacobian_frobenius=REGULARIZER_WEIGHTS["jacobian_frobenius"],
) -> dict:
    """Kinetic energy and Hutchinson Jacobian-Frobenius terms with the same probes, the
    regularized training loss and its gradient (second order through the VJPs, as torch's
    create_graph=True)."""
    tconfig, jconfig = configs(
        solver, splitting, steps, kinetic_energy=kinetic_energy, jacobian_frobenius=jacobian_frobenius
    )
    return regularizer_diffs(torch_gpt(tconfig, dtype), jconfig)


def regularizer_diffs(model, jconfig) -> dict:
    """check_regularizers' comparison of a regularized torch model and its JAX config, from the model's weights."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    model.train()
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    idx, targets = batch()
    probes = jax_impl.draw_probes(jax.random.PRNGKey(7), jconfig, (BATCH, SEQ, TINY["n_embd"]), jnp.dtype(dtype))
    with torch_probes([torch.from_numpy(np.array(p)) for p in jax_impl.probe_sequence(probes, jconfig)]) as it:
        _, loss_t = model(idx, targets)
        total_t = loss_t + model.regularization_loss()
    assert exhausted(it), "torch drew fewer probes than the JAX side holds"
    total_t.backward()
    total_j, loss_j, terms_j, grads_j = _jax_regularized(params, jconfig, jnp_(idx), jnp_(targets), probes)
    return {
        "loss": max(max_abs(loss_j, loss_t), max_abs(total_j, total_t)),
        "regularizers": max(
            max_abs(terms_j["kinetic_energy"], model.last_terms["kinetic_energy"]),
            max_abs(terms_j["jacobian_frobenius"], model.last_terms["jacobian_frobenius"]),
        ),
        "grads": tree_max_rel(grads_j, torch_grads_as_params(model, jconfig)),
    }


CAPACITY_CHECKS = {"forward": forward_diffs, "shortlist": shortlist_diffs, "regularizers": regularizer_diffs}


def check_capacity(check, lever, solver, splitting, steps, bias, dtype) -> dict:
    """A CAPACITY_GRID case: CAPACITY_LEVERS[lever] on TINY (bias as given), compared by the forward, shortlist or
    regularizer check; in float64 on perturbed torch weights, in float32 on the untrained ones whose logits
    tolerances.float32_table assumes within +-1."""
    overrides = {**CAPACITY_LEVERS[lever], "bias": bias}
    if check == "shortlist":
        model, jconfig = shortlist_gpt(solver, splitting, steps, dtype, **overrides)
    else:
        if check == "regularizers":
            overrides.update(REGULARIZER_WEIGHTS)
        tconfig, jconfig = configs(solver, splitting, steps, **overrides)
        model = torch_gpt(tconfig, dtype)
    return CAPACITY_CHECKS[check](perturb(model) if dtype == "float64" else model, jconfig)


def check_tableau(name) -> dict:
    """torch's ButcherTableau vs the JAX method's (a, b, c) read off its diffrax tableau."""
    t = torch_model.TABLEAUX[name]
    m = jax_impl.get_method(name)
    a, b, c = m.coefficients
    assert m.order == t.order and m.stages == t.stages, (m.order, t.order, m.stages, t.stages)
    assert all(len(ra) == len(rt) for ra, rt in zip(a, t.a))
    diffs = [abs(x - y) for ra, rt in zip(a, t.a) for x, y in zip(ra, rt)]
    diffs += [abs(x - y) for x, y in zip(b, t.b)] + [abs(x - y) for x, y in zip(c, t.c)]
    return {"tableau": max(diffs)}


# ---------------------------------------------------------------------------------------------
# optimizer checks


def recipe(**overrides):
    return replace(levers.LeverRecipe(), **overrides)


def check_lr(schedule: str) -> dict:
    r = recipe(schedule=schedule)
    total = train_mps.max_iters
    steps = np.arange(total)
    ref = np.array([train_mps.lr_at(int(s), total, r) for s in steps])
    got = jax.jit(jax.vmap(jax_optim.lr_multiplier(r, total)))(jnp.asarray(steps))
    return {"lr": max_abs(got, ref)}


def _float64_newton_schulz(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz with .bfloat16() replaced by .double()."""
    a, b, c = ns_coefficients
    ortho = grad.double()
    if grad.size(0) > grad.size(1):
        ortho = ortho.T
    ortho = ortho.div(ortho.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = ortho @ ortho.T
        gram_update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        ortho = torch.addmm(ortho, gram_update, ortho, beta=a)
    if grad.size(0) > grad.size(1):
        ortho = ortho.T
    return ortho


@contextmanager
def torch_muon_in_float64():
    """torch's Muon with its Newton-Schulz in float64 instead of bfloat16 (for float64 parity)."""
    import torch.optim._muon as muon_module

    real = muon_module._zeropower_via_newtonschulz
    muon_module._zeropower_via_newtonschulz = _float64_newton_schulz
    try:
        yield
    finally:
        muon_module._zeropower_via_newtonschulz = real


def check_optimizer(optimizer: str, dtype: str = "float64", ns: str = "float64", n_steps: int = 20) -> dict:
    """n_steps optimizer steps from identical gradients (clipping included, schedule in warmup
    then decay): parameters after every step. ns: Muon's Newton-Schulz dtype (torch's is bf16)."""
    total = 2 * n_steps
    r = recipe(optimizer=optimizer, warmup_iters=3, grad_clip=1.0)
    tconfig, jconfig = configs("euler", "lie", 1)
    model = torch_gpt(tconfig, dtype)
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    opts = levers.make_optimizers(model, r, "cpu")
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    tparams = [p for p in model.parameters() if p.requires_grad]
    tx = jax_optim.make_optimizer(r, params, total, muon_ns_dtype=jnp.float64 if ns == "float64" else None)
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: _apply(tx, g, s, p))
    gen = torch.Generator().manual_seed(5)
    worst = 0.0
    quantity = "optimizer" if (optimizer == "adamw" or ns == "float64") else "muon_bf16"
    ctx = torch_muon_in_float64() if ns == "float64" else _nullcontext()
    with ctx:
        for it in range(n_steps):
            for p in tparams:  # gradients ~N(0, 0.05^2): the global norm crosses max_norm=1 both ways
                p.grad = (0.05 * (1 + it % 3)) * torch.randn(p.shape, generator=gen, dtype=p.dtype)
            grads = torch_grads_as_params(model, jconfig)
            train_mps.set_lr(opts, base_lrs, train_mps.lr_at(it, total, r))
            torch.nn.utils.clip_grad_norm_(tparams, r.grad_clip)
            for o in opts:
                o.step()
            params, state = update(grads, state, params)
            worst = max(worst, tree_max_rel(params, jax_impl.params_from_torch(model.state_dict(), jconfig)))
    return {quantity: worst}


def _apply(tx, grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


@contextmanager
def _nullcontext():
    yield


def check_ema(dtype: str = "float64") -> dict:
    gen = torch.Generator().manual_seed(3)
    ema_t = [torch.randn(4, 5, generator=gen, dtype=TORCH_DTYPES[dtype]) for _ in range(3)]
    ema_j = [jnp_(t) for t in ema_t]
    worst = 0.0
    for step in range(10):
        new = [torch.randn(4, 5, generator=gen, dtype=TORCH_DTYPES[dtype]) for _ in range(3)]
        weight = train_mps.ema_weight(step, 0.9)
        train_mps.ema_update(ema_t, new, weight)
        ema_j = jax_optim.ema_update(ema_j, [jnp_(t) for t in new], weight)
        worst = max(worst, max(max_rel(a, b) for a, b in zip(ema_j, ema_t)))
    return {"optimizer": worst}


# ---------------------------------------------------------------------------------------------
# training steps


TRAINING_GRID = [
    # (solver, splitting, steps, optimizer, regularized, dtype)
    ("euler", "lie", 1, "adamw", False, "float64"),
    ("midpoint", "strang", 1, "muon", True, "float64"),
    ("euler", "lie", 1, "adamw", False, "float32"),
]


def check_training(
    solver, splitting, steps, optimizer, regularized, dtype, n_steps: int = 5, random_steps: int = 0, lever: str = ""
) -> dict:
    """n_steps of train_mps.train_step (set_lr, make_optimizers, ema_update) vs the JAX train step
    from the same initialization and batches: the losses and the parameters (and EMA) after. random_steps > 0:
    each step's count drawn as train() draws it (train_mps.drawn_steps), JAX's step compiled for it by
    jax_impl.train.TrainSteps. lever: a CAPACITY_LEVERS name (the optimizers' groups over its parameters)."""
    widths = CAPACITY_LEVERS[lever] if lever else {}
    total = 10
    reg = dict(kinetic_energy=0.1, jacobian_frobenius=0.05) if regularized else {}
    r = recipe(
        optimizer=optimizer,
        warmup_iters=2,
        bias=False,
        ema_decay=0.9,
        solver=solver,
        splitting=splitting,
        steps_per_layer=steps,
        random_steps=random_steps,
        **reg,
        **widths,
    )
    tconfig, jconfig = configs(solver, splitting, steps, bias=False, **reg, **widths)
    model = torch_gpt(tconfig, dtype).train()
    params = jax_impl.params_from_torch(model.state_dict(), jconfig)
    opts = levers.make_optimizers(model, r, "cpu")
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    tparams = [p for p in model.parameters() if p.requires_grad]
    ema_t = [p.detach().clone() for p in tparams]
    tx = jax_optim.make_optimizer(r, params, total, muon_ns_dtype=jnp.float64)
    state = tx.init(params)
    ema_j = jax.tree_util.tree_map(jnp.copy, params)  # the step donates params
    step = jax_impl_train_steps(jconfig, tx)
    x_shape = (BATCH, SEQ, TINY["n_embd"])
    losses = 0.0
    rng, drawn = train_mps.steps_stream(r), set()
    with torch_muon_in_float64():
        for it in range(n_steps):
            idx, targets = batch(seed=it)
            with train_mps.drawn_steps(model, r, rng) as n:
                drawn.add(n)
                probes = None
                if regularized:
                    probes = jax_impl.draw_probes(jax.random.PRNGKey(it), step.config(n), x_shape, jnp.dtype(dtype))
                seq = [] if probes is None else jax_impl.probe_sequence(probes, step.config(n))
                with torch_probes([torch.from_numpy(np.array(p)) for p in seq]) as probe_it:
                    train_mps.set_lr(opts, base_lrs, train_mps.lr_at(it, total, r))
                    loss_t = train_mps.train_step(model, opts, tparams, idx, targets, r)
            assert exhausted(probe_it)
            train_mps.ema_update(ema_t, tparams, train_mps.ema_weight(it, r.ema_decay))
            params, state, loss_j = step(n, params, state, jnp_(idx), jnp_(targets), probes)
            ema_j = jax_optim.ema_update(ema_j, params, train_mps.ema_weight(it, r.ema_decay))
            losses = max(losses, max_abs(loss_j, loss_t))
    assert set(step.steps) == drawn, "one compiled step per drawn step count"
    assert all(f._cache_size() == 1 for f in step.steps.values()), "a jitted train step recompiled"
    ema_sd = dict(zip([n for n, _ in model.named_parameters()], ema_t))
    ema_sd["lm_head.weight"] = ema_sd["transformer.wte.weight"]
    return {
        "loss": losses,
        "training": max(
            tree_max_rel(params, jax_impl.params_from_torch(model.state_dict(), jconfig)),
            tree_max_rel(ema_j, jax_impl.params_from_torch(ema_sd, jconfig)),
        ),
    }


def jax_impl_train_steps(config, tx):
    from jax_impl.train import TrainSteps

    return TrainSteps(config, tx)


# ---------------------------------------------------------------------------------------------
# convergence order (JAX only)

ORDER_REFERENCE_STEPS = 512
# step counts where each order's error sits far above float64 round-off and in the asymptotic range
ORDER_STEP_COUNTS = {1: (4, 8, 16), 2: (4, 8, 16), 3: (2, 4, 8), 4: (2, 4, 8)}


def order_config(**kw):
    return jax_impl.GPTConfig(**{**TINY, "solver": "rk4", "splitting": "parallel", **kw})


@lru_cache(maxsize=1)
def order_problem():
    """A fixed random model whose flow moves x by O(0.3) (kernels x4: std 0.08), x0 ~ N(0, 1).

    At nanoGPT's init the flow barely moves x and rk4's error sits at round-off from 2 steps on;
    much stronger weights leave the asymptotic range at these step counts (measured: x8 bends the
    euler slope to 0.9, x16 to 0.6)."""
    config = order_config()
    params = jax_impl.init_params(jax.random.PRNGKey(0), config, jnp.float64)
    params = jax.tree_util.tree_map(lambda a: 4.0 * a if a.ndim == 3 else a, params)  # kernels only
    x0 = jax.random.normal(jax.random.PRNGKey(1), (BATCH, SEQ, config.n_embd), jnp.float64)
    return params, x0


@cache
def _flow(solver: str):
    """x(L) under `solver` with parallel splitting, fixed steps of a traced size: one compile serves
    every step count (model.integrate bakes steps_per_layer into the program)."""
    method = jax_impl.get_method(solver)
    block = Block(order_config())

    def F(t, y, p):
        return block.apply({"params": p}, y, method="attn_field") + block.apply({"params": p}, y, method="mlp_field")

    @jax.jit
    def flow(h_params, x, dt):
        def layer(x, p):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(F),
                method.solver(),
                t0=0.0,
                t1=1.0,
                dt0=dt,
                y0=x,
                args=p,
                stepsize_controller=diffrax.ConstantStepSize(),
                max_steps=ORDER_REFERENCE_STEPS,
            )
            return sol.ys[-1], None

        return jax.lax.scan(layer, x, h_params)[0]

    return flow


@lru_cache(maxsize=1)
def order_reference():
    params, x0 = order_problem()
    return _flow("rk4")(params["h"], x0, 1.0 / ORDER_REFERENCE_STEPS)


def order_slope(errors: dict) -> float:
    """Fitted order: minus the slope of log error against log steps."""
    n, e = np.array(list(errors), float), np.array(list(errors.values()))
    return float(-np.polyfit(np.log(n), np.log(e), 1)[0])


def check_order(solver: str) -> tuple:
    """|fitted order - order| of a fixed-step method under parallel splitting; errors returned too."""
    params, x0 = order_problem()
    ref = order_reference()
    order = jax_impl.get_method(solver).order
    errors = {
        n: float(jnp.max(jnp.abs(_flow(solver)(params["h"], x0, 1.0 / n) - ref))) for n in ORDER_STEP_COUNTS[order]
    }
    assert min(errors.values()) > 1e-12, f"{solver}: errors reach round-off: {errors}"
    return {"order": abs(order_slope(errors) - order)}, errors


def check_splitting_order(splitting: str, solver: str = "rk4") -> tuple:
    """|fitted order - (1 lie, 2 strang)| through model.integrate: the inner order does not help."""
    params, x0 = order_problem()
    ref = order_reference()
    order = {"lie": 1, "strang": 2}[splitting]
    integrate = jax.jit(jax_impl.integrate, static_argnames="config")
    errors = {}
    for n in ORDER_STEP_COUNTS[order]:
        x, _, _ = integrate(params["h"], order_config(solver=solver, splitting=splitting, steps_per_layer=n), x0)
        errors[n] = float(jnp.max(jnp.abs(x - ref)))
    return {"order": abs(order_slope(errors) - order)}, errors
