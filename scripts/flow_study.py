"""Is a trained model a flow? Its whole-split val loss under its own integrator, a finer one and JAX's tsit5.

A model whose weights define a flow (a discretised ODE dx/dt = A_l(x) + M_l(x) per layer) keeps its loss when
its integrator is refined; a discrete map (the Euler-trained canonical) does not. For each train_mps.py
checkpoint, on every non-overlapping block_size window of the split (train_mps.full_split_loss's protocol):

    own        the integrator it was trained and evaluated with (torch, float32, full_split_loss)
    refined    rk4 under 'parallel' with --refine (4) times its steps per layer (torch)
    tsit5      jax_impl.forward on the same weights: diffrax's Tsit5 under a PIDController at rtol 1e-4
               (atol = rtol / 100), the exact flow of A + M up to the tolerance
    NFE        the attention + MLP evaluations per forward (batches of 8 windows, the harness's batch size) that
               tsit5 needs at rtol 1e-3, 1e-4, 1e-5, from diffrax's own step counts (rejected steps included)

The model is a flow when |refined - own| and |tsit5 - own| are both within AGREEMENT (issue #14: 0.02 nats).

    python scripts/flow_study.py --ckpt out/ckpt.pt                 # one checkpoint
    python scripts/flow_study.py --runs results/benchmark/flow       # every runs/<config>/seed<k>/[out/]ckpt.pt
    python scripts/flow_study.py --runs DIR --resume                 # skip the checkpoints already in the JSON
    python scripts/flow_study.py --plot-only

Results go to <out-dir>/flow_study.json (rewritten atomically after each checkpoint) and flow_study.png.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from _study_common import (
    DEFAULT_DATA_DIR,
    DEFAULT_OUT_DIR,
    ROOT,
    StudyError,
    cli,
    load_checkpoint,
    load_tokens,
    print_environment,
    pyplot,
    read_json,
    save_figure,
    write_json,
)

import levers
import train_mps as tm

STUDY = "flow_study"
AGREEMENT = 0.02  # nats: issue #14's bound on |loss(other integrator) - loss(own)|, per seed
RTOL = 1e-4  # the tsit5 tolerance the agreement is judged at
NFE_RTOLS = (1e-3, 1e-4, 1e-5)
ATOL_PER_RTOL = 1e-2  # atol = rtol * ATOL_PER_RTOL
MAX_STEPS_PER_LAYER = 4096  # tsit5 fails beyond this many steps in one layer (a very stiff field)
JAX_BATCH = 8  # windows per JAX forward: the harness's batch_size, so NFE is per training-sized forward


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ckpt", type=Path, nargs="+", help="train_mps.py checkpoints")
    src.add_argument("--runs", type=Path, nargs="+", help="benchmark folders: each runs/<config>/seed<k>/ckpt.pt")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding the whole val.bin")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the JSON and PNG go")
    p.add_argument("--refine", type=int, default=4, help="the refined integrator's steps per layer, x own")
    p.add_argument("--rtols", type=float, nargs="+", default=list(NFE_RTOLS), help="tsit5 tolerances for NFE")
    p.add_argument("--windows", type=int, default=0, help="first N windows of the split only (0 = all; tests)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the machine is shared)")
    p.add_argument("--resume", action="store_true", help="keep the checkpoints already in the JSON")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the saved JSON only")
    a = p.parse_args(argv)
    if a.refine < 1:
        p.error("--refine must be >= 1")
    if RTOL not in a.rtols:
        a.rtols = sorted({*a.rtols, RTOL}, reverse=True)
    if not a.plot_only and not (a.ckpt or a.runs):
        p.error("give --ckpt PATH... or --runs DIR... (or --plot-only)")
    return a


def checkpoints(args) -> list:
    """(label, seed, path) of each checkpoint to study, in a stable order."""
    if args.ckpt:
        return [(str(p), None, p) for p in args.ckpt]
    found = []
    for d in args.runs:
        # the sandboxed runner keeps a run's checkpoint in its out/ (the candidate's writable folder); runs made
        # before it, beside run.json
        paths = sorted([*Path(d).glob("runs/*/seed*/out/ckpt.pt"), *Path(d).glob("runs/*/seed*/ckpt.pt")])
        if not paths:
            raise StudyError(f"{d} holds no runs/<config>/seed<k>/ckpt.pt: is it a scripts/benchmark.py --out folder?")
        for path in paths:
            seed_dir = path.parent if path.parent.name.startswith("seed") else path.parent.parent
            found.append((seed_dir.parent.name, int(seed_dir.name.removeprefix("seed")), path))
    return found


def split_tokens(tokens: np.ndarray, block_size: int, limit: int) -> torch.Tensor:
    """The split as full_split_loss reads it; `limit` > 0 keeps its first `limit` windows only."""
    n = (len(tokens) - 1) // block_size
    if n < 1:
        raise StudyError(f"val.bin holds {len(tokens)} tokens, fewer than one window of {block_size} + 1")
    if limit:
        tokens = tokens[: min(n, limit) * block_size + 1]
    return torch.from_numpy(tokens.astype(np.int64))


def windows(data: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """full_split_loss's windows: every non-overlapping block_size window, (n, T) inputs and targets."""
    n = (len(data) - 1) // block_size
    offsets = torch.arange(n)[:, None] * block_size + torch.arange(block_size)[None, :]
    return data[offsets], data[offsets + 1]


def torch_loss(model, data: torch.Tensor, **integrator) -> float:
    """train_mps.full_split_loss under the given integrator (then restored)."""
    c = model.config
    saved = {"solver": c.solver, "splitting": c.splitting, "steps_per_layer": c.steps_per_layer}
    model.set_integrator(**integrator)
    try:
        return tm.full_split_loss(model, data)
    finally:
        model.set_integrator(**saved)


def jax_tsit5(ck: dict, x: torch.Tensor, y: torch.Tensor, rtol: float) -> tuple[float, float]:
    """(mean cross-entropy, mean NFE per forward) of the checkpoint's weights under tsit5 at rtol, in JAX."""
    import jax.numpy as jnp

    import jax_impl

    config = jax_impl.config_from_torch(
        ck["model_args"],
        ck["model"],
        solver="tsit5",
        splitting="parallel",
        kinetic_energy=0.0,
        jacobian_frobenius=0.0,
        rtol=rtol,
        atol=rtol * ATOL_PER_RTOL,
        max_steps_per_layer=MAX_STEPS_PER_LAYER,
    )
    params = jax_impl.params_from_torch(ck["model"], config)
    total, nfe = 0.0, []
    for i in range(0, len(x), JAX_BATCH):
        xb, yb = x[i : i + JAX_BATCH].numpy(), y[i : i + JAX_BATCH].numpy()
        _, loss, stats = jax_impl.forward_with_stats(params, config, jnp.asarray(xb), jnp.asarray(yb))
        total += float(loss) * yb.size
        nfe.append(int(stats["nfe"]))
    return total / y.numel(), float(np.mean(nfe))


def study(label, seed, path: Path, sha: str, data: torch.Tensor, args) -> dict:
    t0 = time.time()
    model, _ = load_checkpoint(path)  # validated, in eval mode
    ck = torch.load(path, map_location="cpu", weights_only=False)  # its metrics, and the weights for JAX
    c = model.config
    own = {"solver": c.solver, "splitting": c.splitting, "steps_per_layer": c.steps_per_layer}
    refined = {"solver": "rk4", "splitting": "parallel", "steps_per_layer": args.refine * c.steps_per_layer}
    metrics = ck.get("metrics", {}) or {}
    row = {
        "label": label,
        "seed": seed if seed is not None else metrics.get("seed"),
        "path": str(path),
        "sha256": sha,
        "recipe": metrics.get("recipe"),
        "elapsed_min": metrics.get("elapsed_min"),
        "own_integrator": own,
        "refined_integrator": refined,
        "own": torch_loss(model, data, **own),
        "refined": torch_loss(model, data, **refined),
        "tsit5": {},
    }
    x, y = windows(data, c.block_size)
    for rtol in args.rtols:
        loss, nfe = jax_tsit5(ck, x, y, rtol)
        row["tsit5"][f"{rtol:g}"] = {"loss": loss, "nfe": nfe}
    row["tsit5_loss"] = row["tsit5"][f"{RTOL:g}"]["loss"]
    row["refined_gap"] = row["refined"] - row["own"]
    row["tsit5_gap"] = row["tsit5_loss"] - row["own"]
    row["flow"] = abs(row["refined_gap"]) <= AGREEMENT and abs(row["tsit5_gap"]) <= AGREEMENT
    row["wall_s"] = round(time.time() - t0, 1)
    nfes = " ".join(f"{k} {v['nfe']:.0f}" for k, v in row["tsit5"].items())
    print(
        f"[{STUDY}] {label} seed {row['seed']}: own {row['own']:.4f} | refined {row['refined']:.4f} "
        f"({row['refined_gap']:+.4f}) | tsit5 {row['tsit5_loss']:.4f} ({row['tsit5_gap']:+.4f}) | "
        f"{'FLOW' if row['flow'] else 'not a flow'} | tsit5 NFE by rtol: {nfes} | {row['wall_s']:.0f}s",
        flush=True,
    )
    return row


def table(results: dict) -> str:
    """The rows as a Markdown table (what the README and RESULTS quote)."""
    rtols = results["rtols"]
    head = (
        "| config | seed | own | refined (gap) | tsit5 rtol 1e-4 (gap) | flow | "
        + " | ".join(f"NFE rtol {r}" for r in rtols)
        + " | train min |"
    )
    lines = [head, "|" + "---|" * (7 + len(rtols))]
    for r in results["rows"]:
        o, minutes = r["own_integrator"], r.get("elapsed_min")
        lines.append(
            f"| {row_label(r)} ({o['solver']}/{o['splitting']}x{o['steps_per_layer']}) | {r['seed']} | {r['own']:.3f} | "
            f"{r['refined']:.3f} ({r['refined_gap']:+.3f}) | {r['tsit5_loss']:.3f} ({r['tsit5_gap']:+.3f}) | "
            f"{'yes' if r['flow'] else 'no'} | "
            + " | ".join(f"{r['tsit5'][k]['nfe']:.0f}" for k in rtols)
            + (f" | {minutes:.1f} |" if minutes is not None else " | - |")
        )
    return "\n".join(lines)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    env = print_environment(STUDY)
    json_path = Path(args.out_dir) / f"{STUDY}.json"
    todo = checkpoints(args)
    rows = []
    if args.resume and json_path.exists():
        rows = read_json(json_path, STUDY)["rows"]
    done = {(r["path"], r["sha256"]) for r in rows}
    results = {
        "study": STUDY,
        "agreement": AGREEMENT,
        "rtol": RTOL,
        "rtols": [f"{r:g}" for r in args.rtols],
        "atol_per_rtol": ATOL_PER_RTOL,
        "jax_batch": JAX_BATCH,
        "data_dir": str(args.data_dir),
        "environment": env,
        "rows": rows,
    }
    data = None
    for i, (label, seed, path) in enumerate(todo):
        sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if (str(path), sha) in done:
            print(f"[{STUDY}] {i + 1}/{len(todo)} {path}: in the JSON already (--resume)", flush=True)
            continue
        if data is None:
            model, _ = load_checkpoint(path)
            tokens = load_tokens(args.data_dir, "val", model.config.vocab_size)
            data = split_tokens(tokens, model.config.block_size, args.windows)
            results["windows"] = (len(data) - 1) // model.config.block_size
        print(f"[{STUDY}] {i + 1}/{len(todo)} {path} ({results['windows']} windows)", flush=True)
        rows.append(study(label, seed, path, sha, data, args))
        write_json(json_path, results)  # after each checkpoint: an interrupted study keeps what it measured
    return results


def short_label(label: str) -> str:
    """A benchmark run folder's name as its recipe's changes: canonical_solver=heun_random_steps=4-1a2b3c ->
    solver=heun, random_steps=4 (a checkpoint path stays as it is)."""
    name, _, tail = label.rpartition("-")
    if not (name and len(tail) == 6 and name.startswith("canonical")):
        return label
    fields = re.findall(r"([a-z][a-z0-9_]*?)=([^_=]+)(?:_|$)", name.removeprefix("canonical").lstrip("_"))
    return ", ".join(f"{k}={v}" for k, v in fields) or "canonical"


def row_label(row: dict) -> str:
    """A row's name: the Recipe fields its checkpoint's recipe changes from today's defaults (benchmark folder
    names are cut short), else its label."""
    recipe = row.get("recipe")
    if not isinstance(recipe, dict):
        return short_label(row["label"])
    defaults = asdict(levers.LeverRecipe())
    changed = [f"{k}={v}" for k, v in recipe.items() if k != "seed" and k in defaults and defaults[k] != v]
    return ", ".join(changed) or "canonical"


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    rows = results["rows"]
    fig, (ax, axn) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = list(dict.fromkeys(row_label(r) for r in rows))
    for k, label in enumerate(labels):
        sel = [r for r in rows if row_label(r) == label]
        for j, (key, marker) in enumerate((("own", "o"), ("refined", "s"), ("tsit5_loss", "^"))):
            xs = [k + 0.12 * (j - 1)] * len(sel)
            ax.plot(xs, [r[key] for r in sel], marker, color=f"C{j}", label=key if k == 0 else None, mfc="none")
        gap = max((r["refined_gap"] for r in sel), key=abs)
        top = max(max(r["own"], r["refined"], r["tsit5_loss"]) for r in sel)
        ax.annotate(f"{gap:+.3f}", (k, top), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        rt = results["rtols"]
        nfe = [np.median([r["tsit5"][t]["nfe"] for r in sel]) for t in rt]
        axn.plot([float(t) for t in rt], nfe, "o-", label=label)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([lab.replace(", ", "\n") for lab in labels], fontsize=7)
    ax.margins(y=0.12)
    ax.set_ylabel("whole-split val loss (nats)")
    ax.set_title(
        f"one set of weights, three integrators; the numbers: refined - own\n(a flow agrees within "
        f"{results['agreement']} nats on every seed)",
        fontsize=10,
    )
    ax.legend(["own integrator", "rk4/parallel, finer", f"JAX tsit5 rtol {results['rtol']:g}"], fontsize=8)
    axn.set_xscale("log")
    axn.set_yscale("log")
    axn.invert_xaxis()
    axn.set_xlabel("tsit5 rtol")
    axn.set_ylabel("NFE per forward (median over seeds)")
    axn.set_title("adaptive cost")
    axn.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    png = Path(args.out_dir) / f"{STUDY}.png"
    if args.plot_only:
        results = read_json(Path(args.out_dir) / f"{STUDY}.json", STUDY)
    else:
        results = run(args)
    if not results["rows"]:
        raise StudyError("no checkpoint was studied")
    plot(results, png)
    print(table(results), flush=True)
    print(f"[{STUDY}] wrote {Path(args.out_dir) / (STUDY + '.json')} and {png}", flush=True)
    return results


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    cli(main)
