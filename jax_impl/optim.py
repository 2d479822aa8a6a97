"""
train_mps.py's optimization in optax: the schedule, AdamW, clipping, Muon and the weight EMA.

Every default that differs between torch and optax is pinned here to torch's (PARITY.md):

  schedule   `lr_multiplier(recipe, total)` is train_mps.lr_at as a pure, jit-able step -> value
             function; optax counts the first update as step 0, as train_mps sets lr_at(it) before
             the step of iteration `it`.
  AdamW      optax.adamw with torch's eps (1e-8), eps_root 0, the recipe's betas and weight decay,
             the decay multiplied by the learning rate (as torch), and a decay mask mirroring
             torch's parameter groups: decay on >= 2-D parameters, none on 1-D.
  clipping   `clip_by_global_norm_torch`: torch.nn.utils.clip_grad_norm_'s coefficient
             max_norm / (norm + 1e-6), clamped to 1 and always applied (optax.clip_by_global_norm
             has no epsilon and only rescales when norm > max_norm).
  Muon       `muon_torch`: torch.optim.Muon (torch 2.13, torch/optim/_muon.py) as one transform;
             optax.contrib.muon differs in eps (1e-8), momentum form, shape scaling and which
             leaves it takes, so it cannot match.
  EMA        `ema_update`: torch._foreach_lerp_(ema, params, weight), weight = train_mps.ema_weight(step, decay).

Parameters under params["h"] are stacked over layers: their torch dimensionality is ndim - 1.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# ---------------------------------------------------------------------------------------------
# Schedule


def lr_multiplier(recipe, total: int) -> Callable:
    """train_mps.lr_at(step, total, recipe) as a jit-able function of the (integer) step."""
    r = recipe
    if r.schedule not in ("constant", "cosine", "wsd"):
        raise ValueError(f"unknown schedule {r.schedule!r}; valid: constant, cosine, wsd")
    floor = r.min_lr / r.learning_rate
    decay_start = total - int(r.decay_frac * total)

    def multiplier(step):
        step = jnp.asarray(step)
        s = step.astype(jnp.result_type(float))
        if r.schedule == "constant":
            return jnp.ones_like(s)
        warm = (s + 1) / r.warmup_iters
        if r.schedule == "cosine":
            progress = jnp.minimum(1.0, (s - r.warmup_iters) / max(1, total - r.warmup_iters))
            after = floor + 0.5 * (1.0 - floor) * (1.0 + jnp.cos(math.pi * progress))
        else:  # wsd
            progress = jnp.minimum(1.0, (s - decay_start) / max(1, total - decay_start))
            after = jnp.where(step < decay_start, 1.0, floor + (1.0 - floor) * (1.0 - progress))
        return jnp.where(step < r.warmup_iters, warm, after)

    return multiplier


def lr_schedule(peak: float, recipe, total: int) -> Callable:
    """The learning rate of a torch parameter group whose base lr is `peak`: peak * lr_at(step)."""
    mult = lr_multiplier(recipe, total)
    return lambda step: peak * mult(step)


# ---------------------------------------------------------------------------------------------
# Parameter groups


def _torch_ndim(path, leaf) -> int:
    stacked = bool(path) and getattr(path[0], "key", None) == "h"
    return leaf.ndim - 1 if stacked else leaf.ndim


def decay_mask(params):
    """True where torch decays: >= 2-D parameters (matrices, embeddings); 1-D (biases, norms) not.
    Leaves that are not arrays (optax.MaskedNode inside multi_transform) get False."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: hasattr(leaf, "ndim") and _torch_ndim(path, leaf) >= 2, params
    )


def muon_labels(params):
    """train_mps's Muon split: hidden 2-D matrices (p.dim() == 2 and '.h.' in the name) -> 'muon',
    the rest (embeddings, norms, biases) -> 'adamw'."""

    def label(path, leaf):
        hidden = bool(path) and getattr(path[0], "key", None) == "h" and _torch_ndim(path, leaf) == 2
        return "muon" if hidden else "adamw"

    return jax.tree_util.tree_map_with_path(label, params)


# ---------------------------------------------------------------------------------------------
# Transforms


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: total = ||(||g_1||, ..., ||g_n||)||_2,
    g <- g * min(max_norm / (total + 1e-6), 1), applied always (a no-op multiply by 1 below)."""

    def update_fn(updates, state, params=None):
        del params
        leaves = jax.tree_util.tree_leaves(updates)
        total = jnp.linalg.norm(jnp.stack([jnp.linalg.norm(g.ravel()) for g in leaves]))
        coef = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        return jax.tree_util.tree_map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def adamw_torch(learning_rate, b1: float, b2: float, weight_decay: float, eps: float = 1e-8):
    """torch.optim.AdamW with nanoGPT's groups: optax.adamw with every default pinned to torch's."""
    return optax.adamw(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_root=0.0, weight_decay=weight_decay, mask=decay_mask
    )


def torch_lerp(start, end, weight):
    """torch.lerp's formula (ATen Lerp.h): the branch on |weight| < 0.5 keeps the result exact at
    both ends. `weight` is a Python float (the branch is static) or a traced scalar (both branches,
    selected by `jnp.where`)."""
    if isinstance(weight, (int, float)):
        if abs(weight) < 0.5:
            return start + weight * (end - start)
        return end - (end - start) * (1.0 - weight)
    weight = jnp.asarray(weight, start.dtype)
    return jnp.where(jnp.abs(weight) < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


def newton_schulz_torch(W, coefficients=(3.4445, -4.775, 2.0315), steps: int = 5, eps: float = 1e-7, dtype=None):
    """torch.optim._muon._zeropower_via_newtonschulz for one matrix in torch's (out, in) layout.

    torch runs it in bfloat16; on CPU each bf16 op (norm, divide, matmul, addmm) computes in
    float32 and rounds once, which this emulates (probed on torch 2.13: addmm(C, A, B, beta, alpha)
    rounds beta*C + alpha*A@B once). `dtype=float64` runs it unrounded in float64 (used by the
    parity tests to check the rest of Muon at float64 tolerance)."""
    dtype = jnp.bfloat16 if dtype is None else dtype
    low = jnp.dtype(dtype) == jnp.bfloat16
    acc = jnp.float32 if low else dtype
    # torch converts a float64 tensor to bf16 through float32 (c10::BFloat16 takes a float)
    rnd = (lambda v: v.astype(jnp.float32).astype(dtype).astype(acc)) if low else (lambda v: v.astype(dtype))
    mm = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    a, b, c = coefficients
    x = rnd(W)
    if W.shape[0] > W.shape[1]:
        x = x.T
    norm = rnd(jnp.sqrt(jnp.sum(jnp.square(x))))
    x = rnd(x / jnp.maximum(norm, rnd(jnp.asarray(eps, acc))))
    for _ in range(steps):
        gram = rnd(mm(x, x.T))
        gram_update = rnd(b * gram + c * mm(gram, gram))
        x = rnd(a * x + mm(gram_update, x))
    if W.shape[0] > W.shape[1]:
        x = x.T
    return x


def _adjust_lr_ratio(adjust_lr_fn, shape) -> float:
    A, B = shape[:2]  # torch (out, in)
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, A / B))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    return 1.0


class MuonState(NamedTuple):
    count: jax.Array
    momentum_buffer: optax.Updates


def muon_torch(
    learning_rate,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients=(3.4445, -4.775, 2.0315),
    ns_steps: int = 5,
    eps: float = 1e-7,
    adjust_lr_fn=None,
    ns_dtype=None,
) -> optax.GradientTransformation:
    """torch.optim.Muon (torch 2.13) for Flax kernels, per step and matrix:

        B <- lerp(B, g, 1 - mu);  U <- lerp(g, B, mu) if nesterov else B
        O <- NewtonSchulz(U) in torch's (out, in) layout (the (in, out) kernel is transposed to it
             and back, so the orientation rule and rounding are torch's)
        theta <- theta (1 - lr wd) - lr * adjust(shape) * O

    Defaults are torch's. Leaves may carry leading axes (stacked layers): the last two axes are the
    kernel. `learning_rate` is a float or a step -> value schedule."""
    schedule = learning_rate if callable(learning_rate) else (lambda step: learning_rate)

    def init_fn(params):
        return MuonState(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update_fn(updates, state, params):
        lr = schedule(state.count)
        buffers = jax.tree_util.tree_map(
            lambda buf, g: torch_lerp(buf, g, 1 - momentum), state.momentum_buffer, updates
        )

        def one(g, buf, p):
            u = torch_lerp(g, buf, momentum) if nesterov else buf
            out_in = p.shape[-1], p.shape[-2]
            ortho = lambda k: newton_schulz_torch(k.T, ns_coefficients, ns_steps, eps, ns_dtype).T
            for _ in range(p.ndim - 2):
                ortho = jax.vmap(ortho)
            orthogonalized = ortho(u).astype(p.dtype)
            adjusted = lr * _adjust_lr_ratio(adjust_lr_fn, out_in)
            new_p = p * (1 - lr * weight_decay) - adjusted * orthogonalized
            return (new_p - p).astype(p.dtype)

        new_updates = jax.tree_util.tree_map(one, updates, buffers, params)
        return new_updates, MuonState(optax.safe_increment(state.count), buffers)

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# train_mps's optimizer, whole


def make_optimizer(recipe, params, total: int, muon_ns_dtype=None) -> optax.GradientTransformation:
    """train_mps.make_optimizers + clip_grad_norm_ as one optax chain: clipping over all
    parameters, then AdamW everywhere (adamw) or Muon on hidden matrices + AdamW on the rest (muon).
    muon_ns_dtype: Muon's Newton-Schulz dtype, bfloat16 (torch's) unless given."""
    r = recipe
    clip = clip_by_global_norm_torch(r.grad_clip) if r.grad_clip > 0 else optax.identity()
    adamw = adamw_torch(lr_schedule(r.learning_rate, r, total), r.beta1, r.beta2, r.weight_decay)
    if r.optimizer == "adamw":
        return optax.chain(clip, adamw)
    if r.optimizer == "muon":
        muon = muon_torch(
            lr_schedule(r.muon_lr, r, total),
            weight_decay=r.weight_decay,
            adjust_lr_fn="match_rms_adamw",
            ns_dtype=muon_ns_dtype,
        )
        return optax.chain(clip, optax.multi_transform({"muon": muon, "adamw": adamw}, muon_labels(params)))
    raise ValueError(f"unknown optimizer {r.optimizer!r}; valid: adamw, muon")


def ema_update(ema_params, params, weight):
    """train_mps.ema_update: ema <- lerp(ema, params, weight), torch's lerp formula; the weight of a step is
    train_mps.ema_weight(step, decay) (a traced scalar here: one compile for every step)."""
    return jax.tree_util.tree_map(lambda e, p: torch_lerp(e, p, weight), ema_params, params)
