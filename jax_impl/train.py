"""
python -m jax_impl.train: train_mps.py's run, in JAX (jit-compiled train step, optax, diffrax).

The same fixed block (batch 8, block 64, 4 layers, 4 heads, 32 embd, 10001 iters, eval every
100) and the same Recipe defaults, imported from train_mps so they cannot drift. By default the run
is train_mps's run mirrored: the initial weights are the ones torch draws for the seed
(torch.manual_seed, train_mps.make_model, params_from_torch) and the training and evaluation batches come
from train_mps.get_batch with the same seeded torch generators, so the two trainers see identical
data; `--init jax` draws the weights with jax.random instead. The model is train_mps.make_model's for
the recipe, so with Recipe.shortlist (canonical) its softmax covers the tokens of train.bin only
(train_mps.train_vocabulary), the ids carried by the JAX config and written as the checkpoint's buffers.

Prints a progress line per evaluation, then best_vloss, the whole-split val loss and elapsed
minutes (clock as train_mps: from after the data load to the end of the loop); `train()` returns
(best_vloss, elapsed_min, val_loss_full). Writes metrics.json and ckpt.pt (torch.save of
{"model": state_dict, "model_args", "iter_num", "metrics"}), as one pair (train_mps.write_pair), loadable by
model.py:

    ckpt = torch.load(path); levers.model_from_args(ckpt["model_args"]).load_state_dict(ckpt["model"])
    config = jax_impl.config_from_torch(ckpt["model_args"], ckpt["model"])  # and back into JAX

`--init-from CKPT` starts from a trained checkpoint's weights instead (train_mps.py's or this trainer's, for the same
train.bin): fine-tuning under another integrator, e.g. a flow-trained torch model under tsit5. `--random-steps K`
is Recipe.random_steps: each training step under a step count drawn from --steps..K, the same draws as train_mps.
`--ngram-distill A` is Recipe.ngram_distill: the step trains on (1 - A) CE(targets) + A CE(teacher) + regularizers,
the teacher an interpolated Kneser-Ney trigram fitted on train.bin over the model's output rows (jax_impl.teacher,
written apart from levers.NgramTeacher; a parity test compares the two); `--ngram-loo` is Recipe.ngram_loo, the
teacher leaving each position's own trigram occurrence out of its counts. Both go into the recipe (validated by it,
recorded in the metrics); the progress lines and metrics report the pure cross-entropy, as train_mps.

Environment: TRAIN_MPS_DATA_DIR (data folder), TRAIN_MPS_OUT_DIR (default out/jax), TRAIN_MPS_SEED (unless
--seed). Fails as train_mps does, before any work or before writing anything: a bad iteration count, seed or
output folder, a stale data set, a non-finite loss (train_mps.check_finite, at the same points).
Float32 (x64 stays off); CPU unless JAX sees a GPU (then matmuls at 'float32' precision, PARITY.md).
"""

import argparse
import os
import platform
import sys
import time
from collections import deque
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .model import (
    ADJOINTS,
    GPTConfig,
    config_from_torch,
    draw_probes,
    forward,
    forward_with_stats,
    init_params,
    loss_terms,
    params_from_torch,
    params_to_torch,
    torch_config_kwargs,
)
from .optim import ema_update, lr_multiplier, make_optimizer
from .solvers import METHODS, SPLITTINGS
from .teacher import distill_loss_terms, make_teacher, teacher_target

# ---------------------------------------------------------------------------------------------
# the jitted step


def make_train_step(config: GPTConfig, tx: optax.GradientTransformation, distill: float = 0.0):
    """step(params, opt_state, xb, yb, probes=None, teacher_probs=None) -> (params, opt_state, loss): one optimizer
    step on the cross-entropy plus the regularizers (train_mps.train_step), jit-compiled once. distill > 0
    (Recipe.ngram_distill): on (1 - distill) CE + distill CE(teacher_probs) + the regularizers, teacher_probs the
    batch's teacher_target (b * t, n_rows); the loss returned stays the pure cross-entropy."""

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, xb, yb, probes=None, teacher_probs=None):
        if distill:
            if teacher_probs is None:
                raise ValueError("a distillation step (distill > 0) needs the batch's teacher_probs")
            loss_fn = partial(distill_loss_terms, teacher_probs=teacher_probs, distill=distill)
        else:
            loss_fn = loss_terms
        (_, (loss, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, config, xb, yb, probes=probes)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


class TrainSteps:
    """step(n_steps, params, opt_state, xb, yb, probes=None, teacher_probs=None): make_train_step's step (with
    `distill`, Recipe.ngram_distill) under `n_steps` steps per layer (Recipe.random_steps draws it per training
    step; otherwise it is always config.steps_per_layer), each count compiled once, on first use."""

    def __init__(self, config: GPTConfig, tx: optax.GradientTransformation, distill: float = 0.0):
        self.base, self.tx, self.distill, self.steps = config, tx, distill, {}

    def config(self, n_steps: int) -> GPTConfig:
        return self.base if n_steps == self.base.steps_per_layer else replace(self.base, steps_per_layer=n_steps)

    def __call__(self, n_steps, params, opt_state, xb, yb, probes=None, teacher_probs=None):
        if n_steps not in self.steps:
            config = self.config(n_steps)
            # the plain step keeps the two-argument call (tests/test_safe_failure.py wraps make_train_step so)
            plain = not self.distill
            step = make_train_step(config, self.tx) if plain else make_train_step(config, self.tx, self.distill)
            self.steps[n_steps] = step
        return self.steps[n_steps](params, opt_state, xb, yb, probes, teacher_probs)


@partial(jax.jit, static_argnames="config")
def _mean_loss(params, config, x, y):
    return forward(params, config, x, y)[1]  # the loss only: XLA drops the (b, t, vocab) logits


def full_split_loss(params, config: GPTConfig, data: np.ndarray, block_size: int, windows_per_batch: int = 64):
    """train_mps.full_split_loss: mean cross-entropy over non-overlapping block_size windows (each
    chunk's mean loss times its target count: the same in full-softmax and shortlist modes)."""
    n_windows = (len(data) - 1) // block_size
    total, count = 0.0, 0
    for start in range(0, n_windows, windows_per_batch):
        w = np.arange(start, min(start + windows_per_batch, n_windows))
        chunk = data[w[:, None] * block_size + np.arange(block_size + 1)[None, :]].astype(np.int32)
        loss = float(_mean_loss(params, config, jnp.asarray(chunk[:, :-1]), jnp.asarray(chunk[:, 1:])))
        total += loss * chunk[:, 1:].size
        count += chunk[:, 1:].size
    return total / count


# ---------------------------------------------------------------------------------------------
# the run


def params_from_checkpoint(path, torch_model, config: GPTConfig) -> dict:
    """The weights of a train_mps.py (or jax_impl.train) checkpoint, to go on training under this run's integrator:
    the weights do not depend on it. They must fit this run's model: its sizes, and its shortlist (the same
    train.bin)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--init-from {path}: no such file; train a checkpoint first (`make train`)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"--init-from {path} is not a train_mps.py checkpoint (no 'model' state_dict)")
    want, have = torch_model.state_dict(), ckpt["model"]
    misfit = [k for k in want if k not in have or tuple(have[k].shape) != tuple(want[k].shape)]
    if misfit:
        raise ValueError(
            f"--init-from {path}: its weights do not fit this run's model (first misfit: {misfit[0]}); it was trained "
            "with other sizes or another recipe's model"
        )
    if "row_tokens" in want and not torch.equal(have["row_tokens"], want["row_tokens"]):
        raise ValueError(
            f"--init-from {path}: its shortlist comes from another train.bin; set TRAIN_MPS_DATA_DIR to the data it "
            "was trained on"
        )
    return params_from_torch(have, config)


def train(
    solver=None,
    steps=None,
    splitting=None,
    rtol=1e-3,
    atol=1e-6,
    adjoint="recursive",
    seed=None,
    max_iters=None,
    init="torch",
    out_dir=None,
    random_steps=None,
    init_from=None,
    ngram_distill=None,
    ngram_loo=None,
):
    import torch

    import levers
    import train_mps as tm

    if jax.default_backend() == "gpu":
        jax.config.update("jax_default_matmul_precision", "float32")  # not TF32 (PARITY.md)
    # The recipe keeps torch's default solver: the torch model only supplies the initial weights (which do not
    # depend on the integrator), and a JAX-only solver (tsit5, dopri5) is no Recipe value; the JAX solver is
    # `solver`, recorded in the metrics' recipe.
    # The integrator's fields default to the Recipe's (the canonical's: heun/parallel x2, trained under 2..4 steps);
    # an adaptive solver chooses its own steps, so its random_steps defaults to 0.
    canonical = levers.LeverRecipe()
    solver = canonical.solver if solver is None else solver
    if solver not in METHODS:
        raise ValueError(f"solver must be one of {', '.join(METHODS)}, got {solver!r}")
    if random_steps is None:
        random_steps = 0 if METHODS[solver].adaptive else canonical.random_steps
    fields = {
        "steps_per_layer": steps,
        "splitting": splitting,
        "random_steps": random_steps,
        "ngram_distill": ngram_distill,
        "ngram_loo": ngram_loo,
    }
    r = replace(canonical, **{k: v for k, v in fields.items() if v is not None})
    # Recipe validates each field: a bad value or ngram_loo without ngram_distill stops here; None: its default
    if random_steps and METHODS[solver].adaptive:
        raise ValueError(f"--random-steps draws fixed step counts; adaptive {solver!r} chooses its own: leave it 0")
    r = replace(r, seed=seed) if seed is not None else tm.seed_from_env(r)
    n_iters = tm.max_iters if max_iters is None else max_iters
    if not tm._is_int(n_iters) or n_iters < 1:
        raise ValueError(f"max_iters must be an integer >= 1, got {n_iters!r}; omit it for the full {tm.max_iters}")
    if n_iters != tm.max_iters:
        print(
            f"!!! [jax_impl.train] --max-iters {n_iters}: a SHORT run instead of the fixed {tm.max_iters} "
            f"iterations, for tests and smoke runs only !!!",
            file=sys.stderr,
            flush=True,
        )

    out = Path(out_dir or os.environ.get("TRAIN_MPS_OUT_DIR") or Path(tm.__file__).resolve().parent / "out" / "jax")
    tm.check_out_dir(out)
    data_dir = tm.find_data_dir()
    train_np = tm.load_split(data_dir, "train", r.vocab_size)
    val_np = tm.load_split(data_dir, "val", r.vocab_size)

    t0 = time.time()
    # train_mps's model for the recipe, its shortlist from train.bin (built by model.py under a torch
    # solver: the weights are integrator-independent), then the JAX integrator; seeded as train_mps.train
    torch.manual_seed(r.seed)
    torch_model = tm.make_model(r, train_np)
    config = config_from_torch(
        torch_model.config, torch_model.state_dict(), solver=solver, rtol=rtol, atol=atol, adjoint=adjoint
    )
    # the torch model only supplies the initial weights (and, below, the checkpoint's format)
    torch_args = torch_config_kwargs(config)
    if torch_args["solver"] not in METHODS or METHODS[torch_args["solver"]].adaptive:
        torch_args["solver"] = "rk4"  # weights are integrator-independent; model.py has no adaptive solver
    if init_from is not None:  # fine-tuning: a trained model's weights, under this run's integrator
        params = params_from_checkpoint(init_from, torch_model, config)
        init = f"checkpoint {init_from}"
    elif init == "torch":
        params = params_from_torch(torch_model.state_dict(), config)  # the weights torch draws for the seed
    else:
        params = init_params(jax.random.PRNGKey(r.seed), config)
    train_data = torch.from_numpy(train_np.astype(np.int64))
    val_data = torch.from_numpy(val_np.astype(np.int64))
    train_gen = torch.Generator().manual_seed(r.seed)
    eval_gen = torch.Generator().manual_seed(r.seed + 1_000_003)
    probe_key = jax.random.PRNGKey(r.seed + 7)

    tx = make_optimizer(r, params, n_iters)
    opt_state = tx.init(params)
    step = TrainSteps(config, tx, r.ngram_distill)
    teacher = make_teacher(config, train_np, r.ngram_distill)  # over the model's rows, as levers.make_teacher
    param_dtype = jax.tree_util.tree_leaves(params)[0].dtype
    steps_rng = tm.steps_stream(r)  # train_mps's draws for Recipe.random_steps, the same ones
    ema = jax.tree_util.tree_map(jnp.copy, params) if r.ema_decay > 0 else None
    ema_step = jax.jit(ema_update)
    lr_mult = lr_multiplier(r, n_iters)
    x_shape = (tm.batch_size, tm.block_size, config.n_embd)

    def as_jnp(t):
        return jnp.asarray(t.numpy().astype(np.int32))

    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params)) - config.block_size * config.n_embd
    print(
        f"[jax_impl.train] {n_iters} iters on {jax.default_backend()}, seed {r.seed}, {n_params / 1e6:.2f}M params, "
        f"{config.solver}/{config.splitting}x{config.steps_per_layer}, adjoint {config.adjoint}, "
        f"softmax over {config.shortlist_size or config.vocab_size}/{config.vocab_size} tokens, data {data_dir}",
        flush=True,
    )
    best_vloss = float("inf")
    last_train_loss = float("nan")
    history = []
    nfe_eval = None
    recent = deque(maxlen=max(1, r.select_window))  # train_mps's model selection, mirrored
    best_sel, best_sel_iter, best_params = float("inf"), None, None
    t_last = time.time()
    for it in range(n_iters):
        if it % tm.eval_interval == 0:
            xv, yv = tm.get_batch(val_data, eval_gen)
            eval_params = ema if ema is not None else params
            _, vloss_j, stats = forward_with_stats(eval_params, config, as_jnp(xv), as_jnp(yv))
            vloss = float(vloss_j)
            tm.check_finite(vloss, "val", it, r)
            nfe_eval = int(stats["nfe"])
            best_vloss = min(best_vloss, vloss)
            sel = levers.window_best(recent, vloss, best_sel, r.select_window)
            if sel is not None:
                best_sel, best_sel_iter = sel, it
                best_params = jax.tree_util.tree_map(jnp.copy, eval_params)  # params are donated: copy
            ms = 1000 * (time.time() - t_last) / (tm.eval_interval if it else 1)
            t_last = time.time()
            history.append({"iter": it, "val_loss": vloss, "train_loss": last_train_loss, "nfe": nfe_eval})
            print(
                f"iter {it:5d}/{n_iters} | train {last_train_loss:.4f} | val {vloss:.4f} | best {best_vloss:.4f} | "
                f"lr x{float(lr_mult(it)):.3f} | NFE {nfe_eval} | {ms:.1f} ms/iter",
                flush=True,
            )
        xb, yb = tm.get_batch(train_data, train_gen)
        n_steps = r.draw_steps(steps_rng)
        probes = None
        if config.jacobian_frobenius > 0:
            probes = draw_probes(jax.random.fold_in(probe_key, it), step.config(n_steps), x_shape)
        teacher_probs = None
        if teacher is not None:  # on the host, outside autograd, as levers.NgramTeacher.target
            teacher_probs = jnp.asarray(teacher_target(teacher, xb.numpy(), yb.numpy(), r.ngram_loo), param_dtype)
        params, opt_state, loss = step(n_steps, params, opt_state, as_jnp(xb), as_jnp(yb), probes, teacher_probs)
        if ema is not None:
            ema = ema_step(ema, params, tm.ema_weight(it, r.ema_decay))
        if it % tm.eval_interval == tm.eval_interval - 1 or it == n_iters - 1:
            last_train_loss = float(loss)  # read here only, as train_mps: no per-step host sync
            tm.check_finite(last_train_loss, "train", it, r)
    last = ema if ema is not None else params
    final = best_params if best_params is not None else last
    selected_iter = best_sel_iter if best_params is not None else n_iters
    jax.block_until_ready(final)
    elapsed_min = (time.time() - t0) / 60.0

    # --- reporting: after the clock stops ---
    val_full = full_split_loss(final, config, val_np, tm.block_size)
    tm.check_finite(val_full, "whole-split val", n_iters, r)
    val_full_last = val_full if final is last else full_split_loss(last, config, val_np, tm.block_size)
    here = Path(__file__).resolve().parent
    metrics = {
        "best_vloss": best_vloss,
        "elapsed_min": elapsed_min,
        "val_loss_full": val_full,
        "val_loss_full_last_weights": val_full_last,
        "selected_iter": selected_iter,
        "seed": r.seed,
        "iters": n_iters,
        "device": jax.default_backend(),
        "init": init,
        "nfe_per_forward": nfe_eval,
        "recipe": {**asdict(r), "solver": solver},
        "model_config": _describe(config),
        "fixed": {"batch_size": tm.batch_size, "block_size": tm.block_size, "max_iters": tm.max_iters},
        "history": history,
        "data_dir": str(data_dir),
        "sources_sha256": {
            f: tm.file_sha256(here / f) for f in ("model.py", "solvers.py", "optim.py", "teacher.py", "train.py")
        },
        "versions": _versions(),
    }
    ckpt = {
        "model": params_to_torch(final, config),
        "model_args": torch_args,
        "iter_num": selected_iter,
        "metrics": metrics,
    }
    tm.write_pair(out, metrics, ckpt)
    print(
        f"[jax_impl.train] best_vloss {best_vloss:.4f} | whole-split val {val_full:.4f} (weights of iter "
        f"{selected_iter}; last weights {val_full_last:.4f}) | NFE {nfe_eval} | seed {r.seed} | "
        f"{elapsed_min:.2f} min\n[jax_impl.train] wrote {out / 'metrics.json'} and {out / 'ckpt.pt'}",
        flush=True,
    )
    return float(best_vloss), float(elapsed_min), float(val_full)


def _describe(config: GPTConfig) -> dict:
    """The config for metrics.json: a shortlist's ids (thousands) are the checkpoint's row_tokens, and
    train_vocabulary of train.bin; here only their count."""
    fields = {k: v for k, v in asdict(config).items() if k != "shortlist"}
    return {**fields, "shortlist_size": config.shortlist_size}


def _versions() -> dict:
    import diffrax
    import flax
    import jaxlib
    import torch

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "diffrax": diffrax.__version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def _iterations(text: str) -> int:
    """--max-iters: a whole number >= 1, else argparse's usage error naming the option."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of iterations >= 1")
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--solver", default=None, choices=list(METHODS), help="default: the Recipe's (heun)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per layer (adaptive solvers: the first step's size); default: the Recipe's (2)",
    )
    p.add_argument("--splitting", default=None, choices=list(SPLITTINGS), help="default: the Recipe's (parallel)")
    p.add_argument("--rtol", type=float, default=1e-3, help="adaptive solvers only")
    p.add_argument("--atol", type=float, default=1e-6, help="adaptive solvers only")
    p.add_argument(
        "--adjoint",
        default="recursive",
        choices=list(ADJOINTS),
        help="recursive: exact backprop through the steps; backsolve: solve the adjoint ODE backwards",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-iters", type=_iterations, default=None, help="a short run of N >= 1 (smoke tests only)")
    p.add_argument("--init", default="torch", choices=["torch", "jax"])
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="start from a trained checkpoint's weights (train_mps.py's ckpt.pt): fine-tune under this integrator",
    )
    p.add_argument("--out-dir", default=None)
    p.add_argument(
        "--random-steps",
        type=int,
        default=None,
        help="Recipe.random_steps: each training step under a step count drawn from --steps..K (0 = off; default: "
        "the Recipe's, 4, or 0 for an adaptive solver)",
    )
    p.add_argument(
        "--ngram-distill",
        type=float,
        default=None,
        metavar="A",
        help="Recipe.ngram_distill: train on (1 - A) CE(targets) + A CE(Kneser-Ney trigram teacher), A in [0, 1) "
        "(default: the Recipe's)",
    )
    p.add_argument(
        "--ngram-loo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Recipe.ngram_loo: the teacher leaves each position's own trigram out of its counts (needs "
        "--ngram-distill; default: the Recipe's)",
    )
    a = p.parse_args(argv)
    return train(
        solver=a.solver,
        steps=a.steps,
        splitting=a.splitting,
        rtol=a.rtol,
        atol=a.atol,
        adjoint=a.adjoint,
        seed=a.seed,
        max_iters=a.max_iters,
        init=a.init,
        out_dir=a.out_dir,
        random_steps=a.random_steps,
        init_from=a.init_from,
        ngram_distill=a.ngram_distill,
        ngram_loo=a.ngram_loo,
    )


if __name__ == "__main__":
    main()
