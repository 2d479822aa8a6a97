"""torch.compile against eager for the canonical's training step (issue #32's fusion lever), side by side.

Two copies of the canonical, built alike from the same seed, train on their own batches: one eager, one with
GPT.integrate (the blocks: the vector fields and the integrator) compiled by torch.compile. Their steps alternate
(eager, compiled, eager, ...), so that both see the same load on a shared machine, and the ratio of each pair is
the figure (median over pairs). The compile time is the first steps of the compiled copy until every step count
that Recipe.random_steps draws has run (each count is a graph), measured cold: inductor's caches are put in a
fresh temporary folder. Also reported: how torch.compile splits the whole model (torch._dynamo.explain: graphs,
graph breaks and where), which decides what compiling more than the blocks can buy.

    python scripts/bench_compile.py                        # 300 pairs, one thread
    python scripts/bench_compile.py --pairs 100 --out results/bench_compile.json

CPU only here (no GPU machine is lent to every task); on CUDA and MPS the same command measures those, where
fusing kernels matters more (a step there is bound by launches). Prints the environment first; writes JSON (atomic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odegpt_eval.environment import environment, print_environment  # noqa: E402
from odegpt_eval.files import atomic_write_bytes  # noqa: E402


def copy(tm, recipe, train_np, data, compiled: bool) -> dict:
    """A canonical model, its optimizers and its own batch and step-count streams; integrate compiled or not."""
    import torch

    torch.manual_seed(recipe.seed)
    model = tm.make_model(recipe, train_np).to(data.device)
    if compiled:
        model.integrate = torch.compile(model.integrate)
    return {
        "model": model,
        "optimizers": recipe.optimizers(model, data.device.type),
        "params": [p for p in model.parameters() if p.requires_grad],
        "batches": torch.Generator().manual_seed(recipe.seed),
        "steps": tm.steps_stream(recipe),
    }


def step(tm, recipe, data, c: dict) -> tuple[float, int, float]:
    """One training step as train() runs it: (seconds, the step count drawn, the loss)."""
    xb, yb = tm.get_batch(data, c["batches"])
    t = time.perf_counter()
    with tm.drawn_steps(c["model"], recipe, c["steps"]) as n:
        loss = tm.train_step(c["model"], c["optimizers"], c["params"], xb, yb, recipe)
    return time.perf_counter() - t, n, loss.item()


def graph_breaks(tm, recipe, train_np, data) -> dict:
    import torch

    torch.manual_seed(recipe.seed)
    model = tm.make_model(recipe, train_np)
    xb, yb = tm.get_batch(data, torch.Generator().manual_seed(0))
    e = torch._dynamo.explain(model)(xb, yb)
    where = [
        f"{b.user_stack[-1].filename.rsplit('/', 1)[-1]}:{b.user_stack[-1].lineno} {b.user_stack[-1].name}"
        for b in e.break_reasons
        if b.user_stack
    ]
    torch._dynamo.reset()
    return {"graphs": e.graph_count, "graph_breaks": e.graph_break_count, "at": sorted(set(where))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=300, help="eager/compiled step pairs timed after the warm-up")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "tinyshakespeare")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_compile.json")
    a = p.parse_args(argv)
    if a.pairs < 1:
        print("[bench_compile] --pairs must be >= 1", file=sys.stderr)
        return 2
    if not (a.data_dir / "train.bin").is_file():
        print(
            f"[bench_compile] no {a.data_dir / 'train.bin'}: run `make data-tinyshakespeare` or give --data-dir",
            file=sys.stderr,
        )
        return 2
    cache = tempfile.mkdtemp(prefix="inductor-cold-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold: the compile time is what a fresh machine pays
    import numpy as np
    import torch

    import levers
    import train_mps as tm

    torch.set_num_threads(a.threads)
    env = environment(sys.argv[1:] if argv is None else argv, a.data_dir, Path(__file__).resolve())
    print_environment(env, "bench_compile")
    recipe = tm.Recipe()
    train_np = tm.load_split(a.data_dir, "train", recipe.vocab_size)
    data = torch.from_numpy(train_np.astype(np.int64))
    eager, compiled = copy(tm, recipe, train_np, data, False), copy(tm, recipe, train_np, data, True)
    counts = set(levers.step_counts(recipe))  # the step counts train() draws, a graph each
    seen, t0, warm = set(), time.perf_counter(), 0
    while seen != counts or warm < 3:  # every drawn step count compiled, then a few more steps
        _, n, _ = step(tm, recipe, data, compiled)
        seen.add(n)
        warm = warm + 1 if seen == counts else 0
    compile_s = time.perf_counter() - t0
    print(f"[bench_compile] compiled GPT.integrate for step counts {sorted(counts)}: {compile_s:.1f} s (cold cache)")
    for _ in range(10):
        step(tm, recipe, data, eager)
    te, tc, ratios = [], [], []
    for i in range(a.pairs):
        e, _, le = step(tm, recipe, data, eager)
        c, _, lc = step(tm, recipe, data, compiled)
        te.append(e)
        tc.append(c)
        ratios.append(c / e)
        if (i + 1) % 100 == 0:
            print(
                f"[bench_compile] {i + 1}/{a.pairs} pairs: ratio median so far {statistics.median(ratios):.3f}",
                flush=True,
            )
    breaks = graph_breaks(tm, recipe, train_np, data)
    result = {
        "environment": env,
        "pairs": a.pairs,
        "compile_s_cold": compile_s,
        "step_ms_eager_median": 1000 * statistics.median(te),
        "step_ms_compiled_median": 1000 * statistics.median(tc),
        "ratio_median": statistics.median(ratios),
        "ratio_quartiles": statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3,
        "last_losses": {"eager": le, "compiled": lc},
        "whole_model": breaks,
    }
    print(
        f"[bench_compile] {a.pairs} pairs: eager {result['step_ms_eager_median']:.1f} ms, compiled "
        f"{result['step_ms_compiled_median']:.1f} ms per step (medians); compiled / eager {result['ratio_median']:.3f} "
        f"(quartiles {', '.join(f'{q:.3f}' for q in result['ratio_quartiles'])})"
    )
    print(
        f"[bench_compile] the whole model: {breaks['graphs']} graphs, {breaks['graph_breaks']} breaks at {breaks['at']}"
    )
    atomic_write_bytes(a.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"[bench_compile] wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
