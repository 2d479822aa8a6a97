"""Kernels dispatched per training step and per evaluation, by section, for benchmark specs.

On a Mac's MPS or a CUDA GPU, at batch 8 x 64 and n_embd 32, a step is bound by kernel launches and Python dispatch,
not by FLOPs: the time of a step follows the number of kernels it dispatches. That number does not depend on the
machine's load, so it is a figure for a report, not a timing. It is counted here on CPU with torch.profiler: the
top-level aten ops of the step (those not called from inside another aten op), each either a view (every op under it
only re-labels memory: t, view, transpose, split, a reshape that needs no copy, ...) or a kernel (anything that reads
or writes tensor data, a copying reshape or contiguous included). CPU runs the same ops as MPS and CUDA for this
code, except where a kernel is chosen by device (fused AdamW: CUDA, and CPU/MPS from torch 2.4).

Sections of one training step, as train_mps.train_step and train() run it:
  forward     model(xb, yb) and the loss terms train_step adds (regularizers, the n-gram teacher)
  backward    total_loss.backward()
  clip        torch.nn.utils.clip_grad_norm_
  optimizer   optimizer.zero_grad() and optimizer.step()
  ema         ema_update, once per step when the recipe has an EMA
  evaluation  one evaluation forward (no_grad, eval mode, the EMA copy where there is one); train() runs one every
              eval_interval steps, so `per_step_total` adds evaluation / eval_interval
Under Recipe.random_steps each possible step count is counted and weighted by its probability (train_mps's
step_counts): the figures are the expected counts of a step as train() draws them.

    python scripts/bench_dispatch.py                                       # baseline, EULER, canonical
    python scripts/bench_dispatch.py --configs baseline canonical canonical:refine_prob=1.0 --out results/x.json
    python scripts/bench_dispatch.py --configs canonical --unfused canonical     # what Block.fused_field saves

Writes JSON (atomic) beside the step-time benchmark's (results/bench_dispatch.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

import bench_integrators  # noqa: E402  (the spec syntax, shared with the step-time benchmark)

EULER = "canonical:solver=euler,splitting=lie,steps_per_layer=1,random_steps=0"  # the Makefile's EULER
DEFAULT_CONFIGS = ["baseline", EULER, "canonical"]
SECTIONS = ("forward", "backward", "clip", "optimizer", "ema", "evaluation")
STEP_SECTIONS = SECTIONS[:-1]


def is_view_op(name: str, cache: dict = {}) -> bool:  # noqa: B006 (a memo of schema lookups)
    """aten::NAME only re-labels memory: some overload returns an alias of an input that it does not write."""
    if name not in cache:
        import torch

        packet = getattr(torch.ops.aten, name.split("::", 1)[1], None)
        aliases = False
        for overload in packet.overloads() if packet is not None else ():
            for ret in getattr(packet, overload)._schema.returns:
                info = ret.alias_info
                aliases = aliases or (info is not None and not info.is_write and "Tensor" in str(ret.type))
        cache[name] = aliases
    return cache[name]


def count_ops(fn) -> dict:
    """Run fn() under torch.profiler; the top-level aten ops it dispatched, by section (the record_function label
    above them, else 'forward'), each {'kernels': n, 'views': n, 'ops': Counter of the kernels' names}."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = {}
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        section, parent = "forward", event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            if parent.name.startswith("odegpt::"):
                section = parent.name.split("::", 1)[1]
                break
            if parent.name.startswith("Optimizer."):  # torch.optim labels step() and zero_grad()
                section = "optimizer"
                break
            parent = parent.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue  # called from inside another aten op: part of that one
        view = all_views(event)
        tally = out.setdefault(section, {"kernels": 0, "views": 0, "ops": Counter()})
        tally["views" if view else "kernels"] += 1
        if not view:
            tally["ops"][event.name] += 1
    return out


def all_views(event) -> bool:
    """The op and every aten op under it only re-label memory (a reshape that copies is a kernel)."""
    return is_view_op(event.name) and all(
        all_views(child) for child in event.cpu_children if child.name.startswith("aten::")
    )


def labelled(label: str, fn):
    """fn wrapped so that the ops it dispatches count in section `label`."""
    from torch.profiler import record_function

    def wrapped(*args, **kwargs):
        with record_function("odegpt::" + label):
            return fn(*args, **kwargs)

    return wrapped


def count_config(name: str, tokens, batch, val_batch, fused_field: bool = True) -> dict:
    """The expected kernels and views per section of one training step of a configuration, and of one evaluation;
    fused_field=False counts the parallel field as attn + mlp (what Block.fused_field saves)."""
    import torch

    import levers
    import train_mps as tm

    r = replace(levers.LeverRecipe(), **bench_integrators.parse_config(name))
    torch.manual_seed(r.seed)
    model = tm.make_model(r, tokens)
    for block in model.transformer.h:
        block.fused = block.fused and fused_field
    opts = r.optimizers(model, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    ema_model, ema_params = tm.make_ema(model) if r.ema_decay > 0 else (None, None)
    eval_model = ema_model if ema_model is not None else model
    teacher = levers.make_teacher(r, model, tokens, "cpu")
    xb, yb = batch

    def step():
        levers.train_step(model, opts, params, xb, yb, r, teacher)
        if ema_model is not None:
            with torch.profiler.record_function("odegpt::ema"):
                tm.ema_update(ema_params, params, tm.ema_weight(1000, r.ema_decay))

    def evaluate():
        eval_model.eval()
        with torch.no_grad(), torch.profiler.record_function("odegpt::evaluation"):
            eval_model(*val_batch)
        eval_model.train()

    original_backward, original_clip = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_
    torch.Tensor.backward = labelled("backward", original_backward)
    torch.nn.utils.clip_grad_norm_ = labelled("clip", original_clip)
    try:
        per_count = {}
        for n, prob in levers.step_counts(r).items():
            model.set_integrator(steps_per_layer=n)  # as drawn_steps sets it for one step
            step()  # the first step creates the optimizer's state: not a step like the others
            per_count[n] = {"probability": prob, "sections": count_ops(step)}
        model.set_integrator(steps_per_layer=r.evaluation_steps())
        evaluate()
        evaluation = count_ops(evaluate).get("evaluation", {"kernels": 0, "views": 0, "ops": Counter()})
    finally:
        torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = original_backward, original_clip

    sections = {}
    for s in STEP_SECTIONS:
        sections[s] = {
            kind: sum(c["probability"] * c["sections"].get(s, {}).get(kind, 0) for c in per_count.values())
            for kind in ("kernels", "views")
        }
    sections["evaluation"] = {"kernels": evaluation["kernels"], "views": evaluation["views"]}
    step_kernels = sum(sections[s]["kernels"] for s in STEP_SECTIONS)
    step_views = sum(sections[s]["views"] for s in STEP_SECTIONS)
    return {
        "name": name if fused_field else name + " (attn + mlp, not fused)",
        "fused_field": any(b.fused for b in model.transformer.h),
        "step_counts": {str(n): c["probability"] for n, c in per_count.items()},
        "nfe": bench_integrators.mean_nfe(model, r),
        "sections": sections,
        "step_kernels": step_kernels,
        "step_views": step_views,
        "per_step_total_kernels": step_kernels + evaluation["kernels"] / tm.eval_interval,
        "by_step_count": {
            str(n): {s: dict(c["sections"][s]["ops"]) for s in c["sections"]} for n, c in per_count.items()
        },
        "evaluation_ops": dict(evaluation["ops"]),
        "recipe": asdict(r),
    }


def markdown(result: dict) -> str:
    ref = result["configs"][0]
    head = "| configuration | NFE | kernels per step | x " + ref["name"] + " | views | "
    head += " | ".join(SECTIONS) + " |"
    lines = [head, "|" + "---|" * (5 + len(SECTIONS))]
    for c in result["configs"]:
        cells = [f"{c['sections'][s]['kernels']:.1f}" for s in SECTIONS]
        ratio = c["step_kernels"] / ref["step_kernels"]
        lines.append(
            f"| `{c['name']}` | {c['nfe']} | {c['step_kernels']:.1f} | {ratio:.2f} | {c['step_views']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--configs", nargs="+", default=DEFAULT_CONFIGS, help="as scripts/bench_integrators.py; first = reference"
    )
    p.add_argument("--unfused", nargs="*", default=[], help="configs also counted without the fused parallel field")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_dispatch.json")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    import train_mps as tm

    for name in a.configs:
        if "@" in name:
            raise SystemExit(f"error: config {name!r}: step variants (@...) are for the step-time benchmark only")
    try:
        tokens = tm.load_split(tm.find_data_dir(), "train", tm.Recipe().vocab_size)
        source = "train.bin"
    except tm.DataError as e:
        print(f"[bench_dispatch] {e}; counting on random token ids instead", flush=True)
        tokens = np.random.default_rng(0).integers(0, 50257, 4 * tm.batch_size * tm.block_size).astype(np.uint16)
        source = "random"
    data = torch.from_numpy(tokens.astype(np.int64))
    gen = torch.Generator().manual_seed(0)
    batch, val_batch = tm.get_batch(data, gen), tm.get_batch(data, gen)
    torch.set_num_threads(1)  # the count does not depend on threads; one keeps the profile small
    configs = []
    for name in a.configs:
        print(f"[bench_dispatch] counting {name}", flush=True)
        configs.append(count_config(name, tokens, batch, val_batch))
    for name in a.unfused:
        print(f"[bench_dispatch] counting {name} without the fused field", flush=True)
        configs.append(count_config(name, tokens, batch, val_batch, fused_field=False))
    result = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "counted": "top-level aten ops on CPU (torch.profiler); kernels = ops that are not views",
        "tokens": source,
        "eval_interval": tm.eval_interval,
        "configs": configs,
    }
    bench_integrators.atomic_write_text(a.out, json.dumps(result, indent=1))
    print(markdown(result))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
