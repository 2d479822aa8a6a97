"""Side-by-side train-step time of integrators and recipe switches: train_mps.train_step under each.

Issue #3's budget for the canonical integrator is 1.15x the baseline's wall time per iteration (the
seeds' starting point: plain Euler block, GPT-2's full softmax, `BASELINE_RECIPE` of odegpt_eval/specs.py).
Each configuration is train_mps's model and optimizer (Recipe defaults, only the integrator changed;
`baseline` is BASELINE_RECIPE; `canonical:FIELD=VALUE,...` overrides any Recipe field, parsed as
benchmark.py parses it, e.g. for the time column of the README's ablation table), built from the same
seed on the same batches of the training split; a recipe with an EMA also times its update.
After a warm-up, repeats interleave the configurations (A B C ... A B C ...), `--steps` steps each,
so drifts in machine load hit them alike. Reports per configuration the median ms/step, NFE, and the
median over repeats of the per-repeat ratio to the first configuration (the reference, default
`baseline`).

Writes results/bench_integrators.json (atomic) and a PNG of the ratios drawn from it.

    python scripts/bench_integrators.py                                   # default grid, 7 repeats x 20 steps
    python scripts/bench_integrators.py --configs euler/lie/1 heun/parallel/1 rk4/strang/2 --repeats 3
    python scripts/bench_integrators.py --configs baseline canonical canonical:optimizer=muon canonical:ema_decay=0.999 \
        --out results/bench_recipes.json                                  # the recipe switches' step times
    python scripts/bench_integrators.py --configs canonical canonical@loss_only canonical@ce_on_logits baseline \
        --out results/bench_output_layer.json                             # what the (b, t, vocab) logits cost

A config may end in `@loss_only`: its step computes the loss alone (the shortlist's k columns; no (b, t, vocab)
logits), as train() did before forward returned nanoGPT's logits; or `@ce_on_logits`: the loss recomputed as
F.cross_entropy over forward's logits, as code written against nanoGPT (an LLM's edit, say) does.
    python scripts/bench_integrators.py --plot-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CONFIGS = [
    "baseline",
    "euler/lie/1",
    "heun/parallel/1",
    "midpoint/strang/1",
    "bosh3/parallel/1",
    "rk4/parallel/1",
]
BUDGET = 1.15  # issue #3: the canonical integrator's time per iteration, relative to the baseline


STEP_VARIANTS = ("loss_only", "ce_on_logits")


def mean_nfe(model, r) -> float:
    """Attention + MLP evaluations per training forward, all layers; under Recipe.random_steps the mean over the
    drawn step counts (levers.step_counts), rounded to 4 digits (an integer where it is one)."""
    import levers

    per_step = sum(model.nfe().values()) / model.config.steps_per_layer
    mean = round(per_step * sum(n * p for n, p in levers.step_counts(r).items()), 4)
    return int(mean) if mean == int(mean) else mean


def split_variant(text: str) -> tuple[str, str | None]:
    """'canonical@loss_only' -> ('canonical', 'loss_only'); no '@' -> (text, None)."""
    if "@" not in text:
        return text, None
    config, variant = text.rsplit("@", 1)
    if variant not in STEP_VARIANTS:
        raise SystemExit(f"error: config {text!r}: unknown step variant {variant!r}; valid: {', '.join(STEP_VARIANTS)}")
    return config, variant


class VariantForward:
    """The model as train_mps.train_step calls it, `model(xb, yb)` -> (logits, loss), with the loss
    computed another way (see the module docstring); everything else is the model's."""

    def __init__(self, model, variant: str):
        if variant == "loss_only" and not model.config.shortlist_size:
            raise SystemExit("error: @loss_only needs a shortlist recipe (the full softmax has no cheaper loss)")
        self.model, self.variant = model, variant

    def __call__(self, xb, yb):
        import torch.nn.functional as F

        m = self.model
        if self.variant == "loss_only":
            x = m.transformer.ln_f(m.integrate(m.embed(xb)))
            ls = F.log_softmax(m.raw_logits(x, m.config.shortlist_size), dim=-1)
            return None, m.shortlist_loss(ls, yb)
        logits, _ = m(xb, yb)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), yb.view(-1))

    def regularization_loss(self):
        return self.model.regularization_loss()


def parse_config(text: str) -> dict:
    """'baseline', 'canonical', 'canonical:field=value,...' or 'solver/splitting/steps' (that integrator with a
    fixed step: random_steps 0) -> the Recipe fields it sets; names are validated by model.GPTConfig and
    parse_overrides."""
    from odegpt_eval.specs import (  # the one definition of the seeds' starting point and of the override syntax
        BASELINE_RECIPE,
        BenchmarkError,
        parse_overrides,
    )

    if text == "baseline":
        return dict(BASELINE_RECIPE)
    if text == "canonical":
        return {}
    if text.startswith("canonical:"):
        import levers

        try:
            return parse_overrides(text.split(":", 1)[1], levers.LeverRecipe)
        except BenchmarkError as e:
            raise SystemExit(f"error: config {text!r}: {e}") from None
    parts = text.split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        raise SystemExit(
            f"error: config {text!r} is not `baseline`, `canonical[:FIELD=VALUE,...]` or SOLVER/SPLITTING/STEPS, "
            "e.g. heun/parallel/1"
        )
    return dict(solver=parts[0], splitting=parts[1], steps_per_layer=int(parts[2]), random_steps=0)  # a fixed step


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in result["configs"]]
    ratios = [c["median_ratio"] for c in result["configs"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, ratios, color=["tab:green" if r <= BUDGET else "tab:red" for r in ratios])
    ax.axhline(BUDGET, color="k", ls="--", lw=1, label=f"budget {BUDGET}x")
    ax.axhline(1.0, color="grey", lw=0.8)
    for i, c in enumerate(result["configs"]):
        ax.text(i, c["median_ratio"], f"{c['median_ms']:.0f} ms\nNFE {c['nfe']}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel(f"time per step / {names[0]}")
    ax.set_title(f"train step time, median of {result['repeats']} interleaved repeats ({result['device']})")
    ax.legend(loc="upper left", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=png.parent, prefix=png.name + ".", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, png)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--configs",
        nargs="+",
        default=DEFAULT_CONFIGS,
        help="baseline, canonical[:FIELD=VALUE,...] or SOLVER/SPLITTING/STEPS; first = reference",
    )
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=20, help="train steps per configuration per repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration first")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_integrators.json")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the saved JSON")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.steps < 1 or a.warmup < 0:
        raise SystemExit("error: --repeats and --steps must be >= 1, --warmup >= 0")
    png = a.out.with_suffix(".png")
    if a.plot_only:
        if not a.out.exists():
            raise SystemExit(f"error: {a.out} does not exist; run scripts/bench_integrators.py first")
        plot(json.loads(a.out.read_text()), png)
        print(f"wrote {png}")
        return

    import numpy as np
    import torch

    import levers
    import train_mps as tm

    parsed = [parse_config(split_variant(c)[0]) for c in a.configs]
    device = "cpu"  # the step time that matters on the Mac is MPS; this measures where we run
    if torch.cuda.is_available():
        device = "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # batches (and the shortlist of the canonical output layer) from the training split when it is
    # prepared; else random GPT-2 ids, with a note: the shortlist then covers nearly every token
    try:
        tokens = tm.load_split(tm.find_data_dir(), "train", tm.Recipe().vocab_size)
        source = "train.bin"
    except tm.DataError as e:
        print(f"[bench_integrators] {e}; timing random token ids instead", flush=True)
        tokens = np.random.default_rng(0).integers(0, 50257, 2 * tm.batch_size * tm.block_size).astype(np.uint16)
        source = "random"
    gen = torch.Generator().manual_seed(0)
    data = torch.from_numpy(tokens.astype(np.int64))
    batches = [tuple(t.to(device) for t in tm.get_batch(data, gen)) for _ in range(8)]

    runs = []
    for name, fields in zip(a.configs, parsed):
        r = replace(levers.LeverRecipe(), **fields)
        torch.manual_seed(r.seed)
        model = tm.make_model(r, tokens).to(device)
        opts = r.optimizers(model, device)
        params = [q for q in model.parameters() if q.requires_grad]  # as train() passes them
        ema = tm.make_ema(model)[1] if r.ema_decay > 0 else None  # the averaged parameters
        variant = split_variant(name)[1]
        if variant is not None and r.ngram_distill > 0:
            raise SystemExit(
                f"error: config {name!r}: a step variant computes its own loss, without the n-gram teacher"
            )
        forward = model if variant is None else VariantForward(model, variant)
        teacher = levers.make_teacher(r, model, tokens, device)  # as train() builds it
        runs.append(
            dict(
                name=name,
                recipe=r,
                model=model,
                forward=forward,
                opts=opts,
                params=params,
                ema=ema,
                it=0,
                ms=[],
                teacher=teacher,
                steps_rng=tm.steps_stream(r),
            )
        )

    def steps(run, n):
        t0 = time.perf_counter()
        loss = None
        for _ in range(n):
            xb, yb = batches[run["it"] % len(batches)]
            r = run["recipe"]
            with tm.drawn_steps(run["model"], r, run["steps_rng"]):  # as train() draws them: the longer steps count
                loss = levers.train_step(run["forward"], run["opts"], run["params"], xb, yb, r, run["teacher"])
            if run["ema"] is not None:
                tm.ema_update(run["ema"], run["params"], tm.ema_weight(run["it"], run["recipe"].ema_decay))
            run["it"] += 1
        if loss is not None:
            loss.item()  # the step's result on the host
        sync()
        return 1000 * (time.perf_counter() - t0) / n

    print(f"[bench_integrators] {len(runs)} configurations on {device}, torch threads {torch.get_num_threads()}")
    for run in runs:
        if a.warmup > 0:
            steps(run, a.warmup)
    ratios = {run["name"]: [] for run in runs}
    for rep in range(a.repeats):
        for run in runs:
            run["ms"].append(steps(run, a.steps))
        ref = runs[0]["ms"][-1]
        for run in runs:
            ratios[run["name"]].append(run["ms"][-1] / ref)
        line = " | ".join(f"{run['name']} {run['ms'][-1]:.1f} ms" for run in runs)
        print(f"repeat {rep + 1}/{a.repeats}: {line}", flush=True)

    result = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "device": device,
        "repeats": a.repeats,
        "steps_per_repeat": a.steps,
        "budget": BUDGET,
        "tokens": source,
        "configs": [
            {
                "name": run["name"],
                "nfe": mean_nfe(run["model"], run["recipe"]),  # attention + MLP evaluations, all layers
                "shortlist_size": run["model"].config.shortlist_size,  # 0: the full softmax
                "ms": run["ms"],
                "median_ms": statistics.median(run["ms"]),
                "ratios": ratios[run["name"]],
                "median_ratio": statistics.median(ratios[run["name"]]),
                "recipe": asdict(run["recipe"]),
            }
            for run in runs
        ],
    }
    atomic_write_text(a.out, json.dumps(result, indent=1))
    plot(result, png)
    print(f"{'config':<20} {'NFE':>4} {'ms/step':>8} {'ratio':>6}")
    for c in result["configs"]:
        flag = "" if c["median_ratio"] <= BUDGET else f"  > {BUDGET}x budget"
        print(f"{c['name']:<20} {c['nfe']:>4} {c['median_ms']:>8.1f} {c['median_ratio']:>6.3f}{flag}")
    print(f"wrote {a.out} and {png}")
    return result


if __name__ == "__main__":
    main()
