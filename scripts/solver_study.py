"""Work-precision of every integrator on a trained checkpoint, and what each does to the val loss.

For every solver x splitting x steps_per_layer, the same weights integrate the embedded validation
windows in float64 on CPU. The error is the relative norm ||x(L) - x_ref(L)|| / ||x_ref(L)|| over all
tokens, against a reference from classic rk4 under 'parallel' with many steps (the exact flow of
dx/dt = A_l(x) + M_l(x), which every splitting approximates); cost is NFE, attention plus MLP
evaluations per forward (gpt.nfe()). The val loss of each configuration is the mean cross-entropy
on the same windows, read from the same x(L) through ln_f and the (float32) head.

Under 'lie' every solver is globally first order (the [A, M] commutator error), under 'strang' at
most second order; only 'parallel' keeps the solver's own order. The fitted slopes show it.

    python scripts/solver_study.py                        # out/ckpt.pt, data/shakespeare -> results/
    python scripts/solver_study.py --steps 1 2 4 --batches 2
    python scripts/solver_study.py --plot-only            # redraw results/solver_study.png
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from _study_common import (
    Progress,
    base_parser,
    cli,
    plain_log_ticks,
    pyplot,
    run_record,
    save_figure,
    setup,
    study_main,
)

from model import SPLITTINGS, TABLEAUX

STUDY = "solver_study"
ORDER_NOTE = (
    "Under 'lie' every solver is globally first order (commutator [A, M] error), whatever its own order; "
    "'strang' is at most second order; only 'parallel' keeps the solver's order."
)


def parse_args(argv=None):
    p = base_parser(__doc__.split("\n")[0], default_batches=4)  # the head on 2048 tokens x 96 configs dominates
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="steps_per_layer values")
    p.add_argument("--solvers", nargs="+", default=list(TABLEAUX), choices=list(TABLEAUX))
    p.add_argument("--splittings", nargs="+", default=list(SPLITTINGS), choices=list(SPLITTINGS))
    p.add_argument("--ref-steps", type=int, default=64, help="steps_per_layer of the rk4/parallel reference")
    return p.parse_args(argv)


def expected_order(solver: str, splitting: str) -> int:
    p = TABLEAUX[solver].order
    return {"lie": 1, "strang": min(p, 2), "parallel": p}[splitting]


def fitted_order(steps, errors, floor: float) -> float | None:
    """Slope of -log(error) vs log(steps) over the points well above the reference's own error."""
    pts = [(s, e) for s, e in zip(steps, errors) if e is not None and e > 100 * floor]
    if len(pts) < 2:
        return None
    s, e = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(-np.polyfit(s, e, 1)[0])


@torch.no_grad()
def final_states(gpt, x0s, solver, splitting, steps):
    gpt.set_integrator(solver=solver, splitting=splitting, steps_per_layer=steps)
    return [gpt.integrate(x0) for x0 in x0s]


def rel_error(xs, refs) -> float:
    num = sum(float((x - r).pow(2).sum()) for x, r in zip(xs, refs))
    den = sum(float(r.pow(2).sum()) for r in refs)
    return math.sqrt(num / den)


@torch.no_grad()
def val_loss(gpt32, xLs, batches) -> float:
    """Mean cross-entropy of the windows given their final states; every batch has the same size."""
    losses = []
    for xL, (_, y) in zip(xLs, batches):
        _, loss = gpt32.head(xL.float(), y)  # the model's own output layer (full softmax or shortlist)
        losses.append(loss.item())
    return float(np.mean(losses))


def run(args) -> dict:
    t0 = time.time()
    gpt32, info, batches, env = setup(STUDY, args)
    gpt64 = copy.deepcopy(gpt32).double()
    trained = {k: getattr(gpt32.config, k) for k in ("solver", "splitting", "steps_per_layer")}
    with torch.no_grad():
        x0s = [gpt64.embed(idx) for idx, _ in batches]  # (B, T, C) each, float64

    ref = final_states(gpt64, x0s, "rk4", "parallel", args.ref_steps)
    half = final_states(gpt64, x0s, "rk4", "parallel", max(1, args.ref_steps // 2))
    # Richardson: error(n) ~ C n^-4, so error(ref) ~ |x(n) - x(n/2)| / (2^4 - 1)
    ref_error = rel_error(half, ref) / 15.0
    ref_loss = val_loss(gpt32, ref, batches)
    print(
        f"[{STUDY}] reference rk4/parallel x{args.ref_steps}: est. rel. error {ref_error:.2e}, val loss {ref_loss:.4f}"
    )

    configs = [(so, sp, n) for sp in args.splittings for so in args.solvers for n in sorted(args.steps)]
    progress = Progress(STUDY, len(configs))
    rows = []
    for solver, splitting, steps in configs:
        xs = final_states(gpt64, x0s, solver, splitting, steps)
        nfe = gpt64.nfe()
        row = {
            "solver": solver,
            "splitting": splitting,
            "steps_per_layer": steps,
            "stages": TABLEAUX[solver].stages,
            "nfe_attn": nfe["attn"],
            "nfe_mlp": nfe["mlp"],
            "nfe": nfe["attn"] + nfe["mlp"],
            "rel_error": rel_error(xs, ref),
            "val_loss": val_loss(gpt32, xs, batches),
            "trained_config": (solver, splitting, steps)
            == (trained["solver"], trained["splitting"], trained["steps_per_layer"]),
        }
        rows.append(row)
        progress.step(
            f"{solver:>8}/{splitting:<8} x{steps}: NFE {row['nfe']:4d} | rel. error {row['rel_error']:.2e} | "
            f"val loss {row['val_loss']:.4f}"
        )

    orders = []
    for splitting in args.splittings:
        for solver in args.solvers:
            sel = [r for r in rows if r["solver"] == solver and r["splitting"] == splitting]
            orders.append(
                {
                    "solver": solver,
                    "splitting": splitting,
                    "expected_order": expected_order(solver, splitting),
                    "fitted_order": fitted_order(
                        [r["steps_per_layer"] for r in sel], [r["rel_error"] for r in sel], ref_error
                    ),
                }
            )
    results = {
        "study": STUDY,
        "note": ORDER_NOTE,
        "error_metric": "||x(L) - x_ref(L)||_2 / ||x_ref(L)||_2 over all tokens of all batches, float64",
        "nfe_metric": "attention + MLP sub-field evaluations per forward pass (gpt.nfe())",
        "loss_metric": "mean cross-entropy over the same validation windows (head in float32)",
        "reference": {
            "solver": "rk4",
            "splitting": "parallel",
            "steps_per_layer": args.ref_steps,
            "rel_error_estimate": ref_error,
            "val_loss": ref_loss,
        },
        "trained_integrator": trained,
        "n_layer": gpt32.config.n_layer,
        "tokens": sum(idx.numel() for idx, _ in batches),
        "configs": rows,
        "orders": orders,
    }
    results["run"] = run_record(args, env, info, t0)
    return results


# ---------------------------------------------------------------------------------------------
# plot: reads only the results dict


def plot(results: dict, path) -> None:
    plt = pyplot()
    rows = results["configs"]
    splittings = list(dict.fromkeys(r["splitting"] for r in rows))
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(solvers)}
    markers = dict(zip(solvers, "osD^v<>ph*"))
    orders = {(o["solver"], o["splitting"]): o for o in results["orders"]}
    ref = results["reference"]
    trained = results["trained_integrator"]

    fig, axes = plt.subplots(2, len(splittings), figsize=(5.2 * len(splittings), 9.5), squeeze=False)
    for j, sp in enumerate(splittings):
        ax, axl = axes[0, j], axes[1, j]
        for so in solvers:
            sel = sorted((r for r in rows if r["solver"] == so and r["splitting"] == sp), key=lambda r: r["nfe"])
            if not sel:
                continue
            o = orders.get((so, sp), {})
            fo = o.get("fitted_order")
            label = f"{so} (slope {fo:.2f}, expect {o.get('expected_order')})" if fo is not None else so
            nfe = [r["nfe"] for r in sel]
            err = [max(r["rel_error"], 1e-17) for r in sel]
            style = dict(color=colors[so], marker=markers[so], ms=5, lw=1.3)
            ax.loglog(nfe, err, label=label, **style)
            axl.semilogx(nfe, [r["val_loss"] for r in sel], label=so, **style)
        if ref.get("rel_error_estimate"):
            ax.axhline(ref["rel_error_estimate"], color="gray", ls=":", lw=1, label="reference's own error (est.)")
        ax.set_title(f"splitting = {sp}" + ("  (every solver 1st order)" if sp == "lie" else ""))
        ax.set_xlabel("NFE per forward (attention + MLP evaluations)")
        ax.set_ylabel("relative error of x(L) vs reference")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")

        axl.axhline(ref["val_loss"], color="k", ls=":", lw=1.2, label=f"reference rk4 x{ref['steps_per_layer']}")
        for r in rows:
            if r["splitting"] == sp and r["trained_config"]:
                axl.plot(r["nfe"], r["val_loss"], "r*", ms=16, mfc="none", label="trained integrator")
        nfes = [r["nfe"] for r in rows if r["splitting"] == sp]
        ticks = [2**k for k in range(int(np.log2(min(nfes))), int(np.ceil(np.log2(max(nfes)))) + 1)]
        for a in (ax, axl):
            a.set_xticks(ticks)
            plain_log_ticks(a.xaxis)
        axl.set_title(f"val loss, splitting = {sp}")
        axl.set_xlabel("NFE per forward (attention + MLP evaluations)")
        axl.set_ylabel("validation cross-entropy")
        axl.grid(True, which="both", alpha=0.3)
        axl.legend(fontsize=7)
    ymin = min(r["val_loss"] for r in rows + [ref])
    ymax = max(r["val_loss"] for r in rows + [ref])
    pad = 0.05 * (ymax - ymin) + 1e-3
    for axl in axes[1]:
        axl.set_ylim(ymin - pad, ymax + pad)
    ckpt = results["run"]["checkpoint"]
    fig.suptitle(
        f"Work-precision on {results['tokens']} val tokens, float64; reference rk4/parallel x{ref['steps_per_layer']}"
        f"; trained as {trained['solver']}/{trained['splitting']}x{trained['steps_per_layer']} "
        f"({ckpt.get('iters')} iters)\n{results['note']}",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> dict:
    return study_main(STUDY, parse_args(argv), run, plot)


if __name__ == "__main__":
    cli(main)
