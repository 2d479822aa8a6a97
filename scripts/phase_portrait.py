"""Phase portrait of the residual stream: token trajectories through depth time under a fine integrator.

The trained weights' ODE dx/dt = F_l(x) = A_l(x) + M_l(x) on t in [l, l+1) is integrated with a fine
integrator (default rk4, 'parallel', 8 steps per layer, float64), recording every step. Per depth time,
over all tokens of the validation batches:

    mean ||x||                  how far the stream has travelled
    mean ||F(x)||               its speed (F_l inside layer l; at t = L the last layer's field)
    mean cos(F(x_n), F(x_n+1))  between successive steps inside a layer: 1 is a straight path
    boundary cos                at t = l, between F_{l-1}(x(l)) and F_l(x(l)): the kink as the field switches

and a 2-D PCA (fitted over every token's state at every recorded time) of a few tokens' trajectories,
with the checkpoint's own integrator's layer-boundary states (what the trained model computes) beside them.

    python scripts/phase_portrait.py                         # out/ckpt.pt -> results/phase_portrait.{json,png}
    python scripts/phase_portrait.py --steps 16 --tokens 8
    python scripts/phase_portrait.py --plot-only
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from _study_common import (
    Progress,
    base_parser,
    cli,
    layer_boundaries,
    pyplot,
    run_record,
    save_figure,
    setup,
    study_main,
)

from model import TABLEAUX, rk_step

STUDY = "phase_portrait"


def parse_args(argv=None):
    p = base_parser(__doc__.split("\n")[0], default_batches=4)
    p.add_argument("--solver", default="rk4", choices=list(TABLEAUX), help="fine integrator (parallel splitting)")
    p.add_argument("--steps", type=int, default=8, help="steps per layer of the fine integrator")
    p.add_argument("--tokens", type=int, default=6, help="token trajectories drawn in the PCA panel")
    return p.parse_args(argv)


@torch.no_grad()
def fine_trajectory(gpt, x0, solver: str, steps: int):
    """States and velocities along rk steps of F_l = A_l + M_l through every layer.

    Returns (xs, vs): xs (n_layer * steps + 1, B, T, C), the state at t = n / steps; vs (n_layer, steps + 1,
    B, T, C), vs[l, k] = F_l(x(l + k / steps)): each layer's field on its closed interval, so at an inner
    boundary both F_{l-1}(x(l)) (left limit) and F_l(x(l)) are there."""
    tableau = TABLEAUX[solver]
    h = 1.0 / steps
    xs, vs = [x0], []
    x = x0
    for block in gpt.transformer.h:
        layer_vs = [block.both_field(x)]  # (B, T, C)
        for _ in range(steps):
            x = rk_step(block.both_field, x, h, tableau)
            xs.append(x)
            layer_vs.append(block.both_field(x))
        vs.append(torch.stack(layer_vs))
    return torch.stack(xs), torch.stack(vs)


def run(args) -> dict:
    t0 = time.time()
    gpt32, info, batches, env = setup(STUDY, args)
    gpt = copy.deepcopy(gpt32).double()
    c = gpt.config
    progress = Progress(STUDY, len(batches))
    xs_all, coarse, norm_x, norm_v, cos_w, cos_b = [], [], [], [], [], []
    for i, (idx, _) in enumerate(batches):
        with torch.no_grad():
            x0 = gpt.embed(idx)  # (B, T, C)
            traj = layer_boundaries(gpt, x0)  # the checkpoint's own integrator, layer boundaries only
        xs, vs = fine_trajectory(gpt, x0, args.solver, args.steps)  # (n_t, B, T, C), (L, steps+1, B, T, C)
        xs_all.append(xs.flatten(1, 2))  # (n_t, B*T, C)
        coarse.append(torch.stack(traj).flatten(1, 2))  # (L+1, B*T, C)
        norm_x.append(xs.norm(dim=-1).flatten(1))  # (n_t, B*T)
        norm_v.append(vs.norm(dim=-1).flatten(2))  # (L, steps+1, B*T)
        cos_w.append(torch.cosine_similarity(vs[:, :-1], vs[:, 1:], dim=-1).flatten(2))  # (L, steps, B*T)
        cos_b.append(torch.cosine_similarity(vs[:-1, -1], vs[1:, 0], dim=-1).flatten(1))  # (L-1, B*T)
        progress.step(f"batch {i}: {xs.shape[0]} states of {tuple(x0.shape)}")

    X = torch.cat(xs_all, dim=1).numpy()  # (n_t, N, C)
    Xc = torch.cat(coarse, dim=1).numpy()  # (L+1, N, C)
    n_t, N, C = X.shape
    flat = X.reshape(-1, C)
    mean = flat.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(flat - mean, rowvar=False))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    pcs = evecs[:, :2]
    pcs = pcs * np.sign(pcs[np.argmax(np.abs(pcs), axis=0), [0, 1]])  # fix the sign: deterministic plots
    gen = np.random.default_rng(args.seed)
    chosen = sorted(gen.choice(N, size=min(args.tokens, N), replace=False).tolist())
    T = batches[0][0].shape[1]
    flat_ids = torch.cat([idx.reshape(-1) for idx, _ in batches])

    times = (np.arange(n_t) / args.steps).tolist()
    nx = torch.cat(norm_x, dim=1)  # (n_t, N)
    nv = torch.cat(norm_v, dim=2)  # (L, steps+1, N)
    cw = torch.cat(cos_w, dim=2)  # (L, steps, N)
    cb = torch.cat(cos_b, dim=1)  # (L-1, N)
    steps = args.steps
    results = {
        "study": STUDY,
        "note": (
            f"Fine integrator {args.solver}/parallel x{args.steps} in float64. Velocity per layer l: F_l = A_l + M_l at "
            "the steps of [l, l+1], both ends included. mean_cos_within[l][k]: F_l at the two ends of step k; "
            "mean_boundary_cos[l-1]: F_{l-1} vs F_l at x(l). PCA over all tokens' states at all times; "
            "coarse: the checkpoint's own integrator at layer boundaries."
        ),
        "fine_integrator": {"solver": args.solver, "splitting": "parallel", "steps_per_layer": args.steps},
        "trained_integrator": {"solver": c.solver, "splitting": c.splitting, "steps_per_layer": c.steps_per_layer},
        "n_layer": c.n_layer,
        "tokens_total": N,
        "times": times,
        "mean_norm_x": nx.mean(1).tolist(),
        "std_norm_x": nx.std(1).tolist(),
        "velocity_times": [[layer + k / steps for k in range(steps + 1)] for layer in range(c.n_layer)],
        "mean_velocity": nv.mean(-1).tolist(),
        "std_velocity": nv.std(-1).tolist(),
        "cos_within_times": [[layer + (k + 0.5) / steps for k in range(steps)] for layer in range(c.n_layer)],
        "mean_cos_within": cw.mean(-1).tolist(),
        "boundary_times": list(range(1, c.n_layer)),
        "mean_boundary_cos": cb.mean(-1).tolist(),
        "coarse_times": list(range(c.n_layer + 1)),
        "coarse_mean_norm_x": np.linalg.norm(Xc, axis=-1).mean(1).tolist(),
        "fine_vs_coarse_rel_diff_at_L": float(np.linalg.norm(X[-1] - Xc[-1]) / np.linalg.norm(X[-1])),
        "pca": {
            "explained_variance_ratio": (evals[:4] / evals.sum()).tolist(),
            "mean": mean.tolist(),
            "components": pcs.T.tolist(),
        },
        "trajectories": [
            {
                "token_index": n,
                "batch_row": n // T,
                "position": n % T,
                "token_id": int(flat_ids[n]),
                "fine_pc": ((X[:, n] - mean) @ pcs).tolist(),
                "coarse_pc": ((Xc[:, n] - mean) @ pcs).tolist(),
            }
            for n in chosen
        ],
    }
    results["run"] = run_record(args, env, info, t0)
    return results


# ---------------------------------------------------------------------------------------------
# plot: reads only the results dict


def plot(results: dict, path) -> None:
    plt = pyplot()
    t = np.array(results["times"])
    L = results["n_layer"]
    fi, tr = results["fine_integrator"], results["trained_integrator"]
    fine_label = f"{fi['solver']}/parallel x{fi['steps_per_layer']}"
    coarse_label = f"trained integrator {tr['solver']}/{tr['splitting']}x{tr['steps_per_layer']}"
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    (ax_x, ax_v), (ax_c, ax_p) = axes

    def layer_lines(ax):
        for b in range(1, L):
            ax.axvline(b, color="gray", lw=0.6, ls=":")

    mx, sx = np.array(results["mean_norm_x"]), np.array(results["std_norm_x"])
    ax_x.plot(t, mx, "-", color="C0", label=f"{fine_label} (mean +- std over tokens)")
    ax_x.fill_between(t, mx - sx, mx + sx, color="C0", alpha=0.15)
    ax_x.plot(results["coarse_times"], results["coarse_mean_norm_x"], "x", color="C3", ms=9, mew=2, label=coarse_label)
    ax_x.set_title("state norm through depth")
    ax_x.set_ylabel("mean ||x(t)||")

    for layer, (tv, mv, sv) in enumerate(
        zip(results["velocity_times"], results["mean_velocity"], results["std_velocity"])
    ):
        mv, sv = np.array(mv), np.array(sv)
        ax_v.plot(tv, mv, "-", color="C1", label="mean ||F_l(x(t))|| (+- std), per layer" if layer == 0 else None)
        ax_v.fill_between(tv, np.maximum(mv - sv, 0), mv + sv, color="C1", alpha=0.15)
    ax_v.set_title("velocity: ||F_l(x)||, F_l = A_l + M_l (jumps where the field switches)")
    ax_v.set_ylabel("mean ||dx/dt||")
    ax_v.set_ylim(bottom=0)

    within = [v for layer in results["mean_cos_within"] for v in layer]
    for layer, (tc, mc) in enumerate(zip(results["cos_within_times"], results["mean_cos_within"])):
        ax_c.plot(tc, mc, "-o", ms=3, color="C2", label="successive steps within a layer" if layer == 0 else None)
    if results["mean_boundary_cos"]:
        ax_c.plot(
            results["boundary_times"],
            results["mean_boundary_cos"],
            "s",
            color="C4",
            ms=8,
            label="at a layer boundary: F_{l-1} vs F_l",
        )
    ax_c.set_title("curvature: cosine between successive velocities (1 = straight)")
    ax_c.set_ylabel("mean cos(F(x_n), F(x_n+1))")
    ax_c.set_ylim(min(-0.05, min(within + results["mean_boundary_cos"]) - 0.05), 1.02)

    for ax in (ax_x, ax_v, ax_c):
        layer_lines(ax)
        ax.set_xlabel("depth time t (layer l owns [l, l+1))")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)

    cmap = plt.cm.viridis
    for i, tr_ in enumerate(results["trajectories"]):
        pc = np.array(tr_["fine_pc"])
        col = plt.cm.tab10(i % 10)
        ax_p.plot(pc[:, 0], pc[:, 1], "-", color=col, lw=1.2, label=f"row {tr_['batch_row']} pos {tr_['position']}")
        ax_p.scatter(pc[:, 0], pc[:, 1], c=t, cmap=cmap, vmin=0, vmax=L, s=10, zorder=3)
        ax_p.plot(pc[0, 0], pc[0, 1], "o", mfc="none", mec=col, ms=10, mew=1.5)
        cp = np.array(tr_["coarse_pc"])
        ax_p.plot(cp[:, 0], cp[:, 1], "x--", color=col, lw=0.7, ms=7, alpha=0.8)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, L))
    fig.colorbar(sm, ax=ax_p, label="depth time t")
    ev = results["pca"]["explained_variance_ratio"]
    ax_p.set_xlabel(f"PC1 ({100 * ev[0]:.0f}% of variance)")
    ax_p.set_ylabel(f"PC2 ({100 * ev[1]:.0f}% of variance)")
    ax_p.set_title("token trajectories (PCA over all tokens, all times)\nring: t=0; x--: trained integrator at t=0..L")
    ax_p.grid(True, alpha=0.3)
    ax_p.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"Phase portrait: {results['tokens_total']} val tokens, fine integrator {fine_label} (float64); "
        f"relative gap to the trained integrator at t=L: {results['fine_vs_coarse_rel_diff_at_L']:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> dict:
    return study_main(STUDY, parse_args(argv), run, plot)


if __name__ == "__main__":
    cli(main)
