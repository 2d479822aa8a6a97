"""Side-by-side train-step time: torch eager (train_mps.train_step) vs the jit-compiled JAX step.

The canonical configuration: train_mps's fixed block (batch 8, block 64, 4 layers, 4 heads, 32 embd)
and Recipe defaults (vocab 50304, no bias, euler / lie / 1 step, AdamW with the Recipe's schedule,
clipping at 1.0, the shortlist softmax over the tokens of train.bin: train_mps.make_model). Both
sides start from the same weights (torch's init, params_from_torch) and take the same batches, drawn
from the training split (TRAIN_MPS_DATA_DIR, else data/shakespeare; scripts/prepare_shakespeare.py). After a warm-up (JAX: compilation), repeats alternate: `--steps` torch
steps, then `--steps` JAX steps, each timed to completion (cuda synchronize / block_until_ready),
so drifts in machine load hit both sides alike. Reports per-step medians and the median over
repeats of the per-repeat ratio torch_ms / jax_ms (> 1: JAX is faster).

Device: CUDA when torch sees it (and JAX then uses its GPU if it has one, at matmul precision
'float32', as torch's default full-precision float32 matmuls; PARITY.md), else CPU. Prints the
environment first; writes JSON to results/bench_torch_vs_jax_<device>.json (or --out).

    python scripts/bench_torch_vs_jax.py                 # default: 7 repeats x 20 steps
    python scripts/bench_torch_vs_jax.py --repeats 3 --steps 5   # short
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def environment(device: str) -> dict:
    import diffrax
    import flax
    import jax
    import jaxlib
    import numpy as np
    import optax
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "flax": flax.__version__,
        "optax": optax.__version__,
        "diffrax": diffrax.__version__,
        "numpy": np.__version__,
        "device": device,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=20, help="train steps per side per repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first (JAX compiles here)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    import train_mps as tm
    from jax_impl import config_from_torch, params_from_torch
    from jax_impl.optim import make_optimizer
    from jax_impl.train import make_train_step

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if jax.default_backend() == "gpu":
        jax.config.update("jax_default_matmul_precision", "float32")
    env = environment(device)
    print("environment:", json.dumps(env), flush=True)

    r = tm.Recipe()
    data_dir = tm.find_data_dir()
    train_tokens = tm.load_split(data_dir, "train", r.vocab_size)
    torch.manual_seed(r.seed)
    model = tm.make_model(r, train_tokens)  # canonical: the shortlist of train.bin's tokens
    kwargs = asdict(model.config)
    jconfig = config_from_torch(model.config, model.state_dict())
    params = params_from_torch(model.state_dict(), jconfig)
    model = model.to(device)
    print(f"data {data_dir}: softmax over {jconfig.shortlist_size or r.vocab_size}/{r.vocab_size} tokens", flush=True)
    optimizers = tm.make_optimizers(model, r, device)
    base_lrs = [[g["lr"] for g in o.param_groups] for o in optimizers]
    tparams = [q for q in model.parameters() if q.requires_grad]
    tx = make_optimizer(r, params, tm.max_iters)
    opt_state = tx.init(params)
    jstep = make_train_step(jconfig, tx)

    gen = torch.Generator().manual_seed(0)
    n_batches = 16
    train_data = torch.from_numpy(train_tokens.astype(np.int64))
    batches = [tm.get_batch(train_data, gen) for _ in range(n_batches)]  # as train_mps draws them
    tb = [(x.to(device), y.to(device)) for x, y in batches]
    jb = [(jnp.asarray(x.numpy().astype(np.int32)), jnp.asarray(y.numpy().astype(np.int32))) for x, y in batches]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    state = {"params": params, "opt": opt_state, "it_t": 0, "it_j": 0}

    def torch_steps(n):
        for _ in range(n):
            it = state["it_t"]
            tm.set_lr(optimizers, base_lrs, tm.lr_at(it, tm.max_iters, r))
            xb, yb = tb[it % n_batches]
            loss = tm.train_step(model, optimizers, tparams, xb, yb, r)
            state["it_t"] += 1
        loss.item()  # the step's result on the host, as the JAX side's block_until_ready
        sync()

    def jax_steps(n):
        for _ in range(n):
            it = state["it_j"]
            xb, yb = jb[it % n_batches]
            state["params"], state["opt"], loss = jstep(state["params"], state["opt"], xb, yb)
            state["it_j"] += 1
        float(loss)

    t0 = time.perf_counter()
    jax_steps(a.warmup)
    jax_warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch_steps(a.warmup)
    torch_warmup_s = time.perf_counter() - t0
    print(f"warm-up ({a.warmup} steps): torch {torch_warmup_s:.2f}s, JAX {jax_warmup_s:.2f}s (compile)", flush=True)

    torch_ms, jax_ms, ratios = [], [], []
    for rep in range(a.repeats):
        t0 = time.perf_counter()
        torch_steps(a.steps)
        t_ms = 1000 * (time.perf_counter() - t0) / a.steps
        t0 = time.perf_counter()
        jax_steps(a.steps)
        j_ms = 1000 * (time.perf_counter() - t0) / a.steps
        torch_ms.append(t_ms)
        jax_ms.append(j_ms)
        ratios.append(t_ms / j_ms)
        print(
            f"repeat {rep + 1}/{a.repeats}: torch {t_ms:.1f} ms/step | JAX {j_ms:.1f} ms/step | ratio {t_ms / j_ms:.2f}"
        )

    result = {
        "environment": env,
        "config": kwargs,
        "data_dir": str(data_dir),
        "recipe": asdict(r),
        "batch_size": tm.batch_size,
        "repeats": a.repeats,
        "steps_per_repeat": a.steps,
        "warmup_steps": a.warmup,
        "torch_warmup_s": torch_warmup_s,
        "jax_warmup_s": jax_warmup_s,
        "torch_ms": torch_ms,
        "jax_ms": jax_ms,
        "ratios_torch_over_jax": ratios,
        "median_torch_ms": statistics.median(torch_ms),
        "median_jax_ms": statistics.median(jax_ms),
        "median_ratio_torch_over_jax": statistics.median(ratios),
    }
    print(
        f"median: torch {result['median_torch_ms']:.1f} ms/step | JAX {result['median_jax_ms']:.1f} ms/step | "
        f"torch/JAX {result['median_ratio_torch_over_jax']:.2f} ({device})"
    )
    out = Path(a.out) if a.out else ROOT / "results" / f"bench_torch_vs_jax_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
