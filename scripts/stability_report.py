"""Linear stability of each layer's flow: Jacobian eigenvalues of F_l = A_l + M_l against RK stability regions.

For each layer l, at the states x_l the checkpoint's own integrator reaches at the layer's start on real
validation batches, the leading eigenvalues of dF_l/dx on the full (B, T, C) state come from Arnoldi
iteration (modified Gram-Schmidt, reorthogonalized) on Jacobian-vector products (torch.func.jvp,
float64). A step of size h is linearly stable for the mode lambda when |R(h lambda)| <= 1, R the
tableau's stability polynomial; the report draws h lambda for h = 1 and for the checkpoint's
h = 1/steps_per_layer over each distinct stability region.

Cross-check: attention is causal and LayerNorm/MLP act per token, so dF_l/dx of one sequence is block
lower-triangular over tokens and its spectrum is the union of the T diagonal C x C blocks' spectra. For
`--dense-sequences` sequences that full spectrum is computed exactly (the whole Jacobian by vmapped jvps,
then eigenvalues of the diagonal blocks) and compared with the Arnoldi estimate.

Under 'lie'/'strang' the solver steps A and M separately, so the relevant Jacobians are dA/dx and dM/dx;
this report uses F = A + M, the field that 'parallel' integrates and that every splitting approximates.

    python scripts/stability_report.py                     # out/ckpt.pt -> results/stability_report.{json,png}
    python scripts/stability_report.py --krylov 30 --batches 2
    python scripts/stability_report.py --plot-only
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
    complex_array,
    complex_list,
    layer_boundaries,
    pyplot,
    run_record,
    save_figure,
    setup,
    study_main,
)
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import TABLEAUX

STUDY = "stability_report"
STABLE_TOL = 1e-9  # |R| <= 1 + tol counts as stable (the boundary itself, e.g. euler at z = -2)


def parse_args(argv=None):
    p = base_parser(__doc__.split("\n")[0], default_batches=2)
    p.add_argument("--krylov", type=int, default=30, help="Arnoldi Krylov vectors per layer and batch")
    p.add_argument("--leading", type=int, default=6, help="leading Ritz values kept per layer and batch")
    p.add_argument("--dense-sequences", type=int, default=1, help="sequences whose exact spectrum is computed")
    p.add_argument("--jvp-chunk", type=int, default=256, help="tangents per vmapped jvp in the dense spectrum")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Jacobian-vector products and eigenvalues


def jvp_operator(field, x):
    """v -> dF/dx(x) v on flat vectors. The math SDPA kernel: the fused CPU kernel has no forward-mode AD."""
    shape = x.shape

    def matvec(v):
        with sdpa_kernel(SDPBackend.MATH):
            return torch.func.jvp(field, (x,), (v.view(shape),))[1].reshape(-1)

    return matvec


def arnoldi(matvec, v0: torch.Tensor, m: int):
    """Arnoldi iteration: Ritz values of the m-dimensional Krylov space and their residual norms.

    Returns (ritz, residuals), complex and real numpy arrays sorted by |ritz| descending. The residual
    ||J u - theta u|| of a Ritz pair (u unit) is |h_{m+1,m}| |e_m^T y|; exactly 0 after a breakdown,
    where the Krylov space is invariant (always by m = dimension)."""
    n = v0.numel()
    m = min(m, n)
    Q = torch.zeros(m + 1, n, dtype=v0.dtype)
    H = torch.zeros(m + 1, m, dtype=v0.dtype)
    Q[0] = v0.reshape(-1) / v0.norm()
    k = m
    for j in range(m):
        w = matvec(Q[j])
        for _ in range(2):  # twice is enough (Kahan): keeps Q orthonormal to round-off
            coef = Q[: j + 1] @ w
            w = w - Q[: j + 1].T @ coef
            H[: j + 1, j] += coef
        H[j + 1, j] = w.norm()
        if H[j + 1, j] <= 1e-12 * H[: j + 2, : j + 1].abs().max():
            k = j + 1  # invariant subspace found: the Ritz values are exact eigenvalues
            break
        Q[j + 1] = w / H[j + 1, j]
    Hk = H[:k, :k].numpy()
    ritz, vecs = np.linalg.eig(Hk)
    vecs = vecs / np.linalg.norm(vecs, axis=0, keepdims=True)
    beta = float(H[k, k - 1]) if k == m and k < n else 0.0
    residuals = abs(beta) * np.abs(vecs[-1, :])
    order = np.argsort(-np.abs(ritz), kind="stable")
    return ritz[order], residuals[order]


def dense_jacobian(field, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The full Jacobian dF/dx of one state x (shape S), as an (n, n) matrix with n = numel, via vmapped jvps."""
    n = x.numel()
    eye = torch.eye(n, dtype=x.dtype)
    cols = []
    with sdpa_kernel(SDPBackend.MATH):
        push = torch.func.vmap(lambda v: torch.func.jvp(field, (x,), (v.view(x.shape),))[1].reshape(-1))
        for s in range(0, n, chunk):
            cols.append(push(eye[s : s + chunk]))  # (chunk, n): row i is J e_i
    return torch.cat(cols).T  # (n, n)


def causal_block_spectrum(J: torch.Tensor, T: int, C: int):
    """Eigenvalues of a (T C, T C) token-block lower-triangular Jacobian: the union of its diagonal blocks'.

    Returns (eigenvalues, relative size of the strictly upper blocks, which causality makes zero)."""
    Jb = J.view(T, C, T, C)
    diag = torch.stack([Jb[t, :, t, :] for t in range(T)])  # (T, C, C)
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    upper_norm = Jb.permute(0, 2, 1, 3)[upper].norm() / J.norm()
    return np.linalg.eigvals(diag.numpy()).ravel(), float(upper_norm)


# ---------------------------------------------------------------------------------------------
# stability polynomials


def stability_coefficients(name: str) -> list:
    """R(z) = sum_k r_k z^k for an explicit tableau: r_0 = 1, r_k = b^T A^{k-1} 1."""
    tab = TABLEAUX[name]
    s = tab.stages
    A = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        A[i, : len(row)] = row
    b, v, coeffs = np.array(tab.b), np.ones(s), [1.0]
    for _ in range(s):
        coeffs.append(float(b @ v))
        v = A @ v
    return coeffs


def poly_eval(coeffs, z):
    return np.polynomial.polynomial.polyval(np.asarray(z, dtype=complex), coeffs)


def poly_label(coeffs) -> str:
    terms = ["1"]
    for k, c in enumerate(coeffs[1:], start=1):
        if abs(c) < 1e-14:
            continue
        zk = "z" if k == 1 else f"z^{k}"
        inv = 1 / c
        terms.append(
            zk if abs(c - 1) < 1e-12 else f"{zk}/{inv:.0f}" if abs(inv - round(inv)) < 1e-9 else f"{c:.4g}{zk}"
        )
    return "R(z) = " + " + ".join(terms)


def stability_groups(names) -> list:
    """Solvers grouped by identical stability polynomial (all s-stage order-s methods share one, s <= 4)."""
    groups: dict = {}
    for name in names:
        coeffs = stability_coefficients(name)
        groups.setdefault(tuple(round(c, 12) for c in coeffs), []).append(name)
    return [{"solvers": v, "coefficients": list(k), "label": poly_label(k)} for k, v in groups.items()]


def max_stable_step(coeffs, lam: complex, z_max: float = 12.0) -> float:
    """Largest h with |R(h' lam)| <= 1 for every h' in (0, h]: where the ray from 0 along lam first leaves.

    0 when it leaves at once (Re lam > 0, or a mode on or near the imaginary axis for a method whose
    region does not hug it there); inf when |lam| == 0."""
    r = abs(lam)
    if r == 0:
        return float("inf")
    if lam.real > 0:  # |R(z)| = |exp(z)| + O(|z|^(p+1)) > 1 for small z: unstable from the start
        return 0.0
    hs = np.geomspace(1e-9, z_max, 20001) / r
    bad = np.abs(poly_eval(coeffs, hs * lam)) > 1 + STABLE_TOL
    if not bad.any():
        return float(hs[-1])
    i = int(np.argmax(bad))
    if i == 0:
        return 0.0
    lo, hi = hs[i - 1], hs[i]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if abs(poly_eval(coeffs, mid * lam)) <= 1 + STABLE_TOL else (lo, mid)
    return float(lo)


def stability_summary(coeffs, leading: np.ndarray, dense: np.ndarray, h_ckpt: float) -> dict:
    """Stability of one method on one layer's modes.

    Modes with Re lambda >= 0 grow under the exact flow too (|exp(h lambda)| >= 1): no step size makes them
    decay, so absolute stability (stable_*, h_max_*) is judged on the decaying modes only (None when there
    are none), and every mode gets the amplification relative to the exact flow, |R(h lambda)| / |exp(h lambda)|
    (> 1: the step grows the mode faster than the ODE does)."""
    decaying = leading[leading.real < 0]
    dominant = decaying[np.argmax(np.abs(decaying))] if len(decaying) else None
    out = {
        "decaying_leading_modes": len(decaying),
        "growing_leading_modes": int((leading.real >= 0).sum()),
        "h_max_dominant": max_stable_step(coeffs, complex(dominant)) if dominant is not None else None,
        "h_max_leading": min((max_stable_step(coeffs, complex(lam)) for lam in decaying), default=None),
    }
    dense_decaying = dense[dense.real < 0]
    for tag, h in (("h1", 1.0), ("h_ckpt", h_ckpt)):
        absR = np.abs(poly_eval(coeffs, h * decaying))
        out[f"stable_{tag}"] = bool((absR <= 1 + STABLE_TOL).all()) if len(decaying) else None
        out[f"max_abs_R_{tag}"] = float(absR.max()) if len(decaying) else None
        if len(leading):
            ratio = np.abs(poly_eval(coeffs, h * leading)) / np.abs(np.exp(h * leading))
            out[f"max_amplification_vs_exact_{tag}"] = float(ratio.max())
        if len(dense_decaying):
            absRd = np.abs(poly_eval(coeffs, h * dense_decaying))
            out[f"unstable_fraction_{tag}_dense"] = float((absRd > 1 + STABLE_TOL).mean())
    return out


# ---------------------------------------------------------------------------------------------
# run


def layer_states(gpt, batches):
    """States at the start of each layer under the checkpoint's own integrator: [layer][batch] -> (B, T, C)."""
    per_batch = []
    with torch.no_grad():
        for idx, _ in batches:
            traj = layer_boundaries(gpt, gpt.embed(idx))
            per_batch.append(traj[:-1])
    return [list(layer) for layer in zip(*per_batch)]


def run(args) -> dict:
    t0 = time.time()
    gpt32, info, batches, env = setup(STUDY, args)
    gpt = copy.deepcopy(gpt32).double()
    c = gpt.config
    h_ckpt = 1.0 / c.steps_per_layer
    states = layer_states(gpt, batches)
    gen = torch.Generator().manual_seed(args.seed)
    groups = stability_groups(TABLEAUX)
    coeffs = {name: g["coefficients"] for g in groups for name in g["solvers"]}

    progress = Progress(STUDY, c.n_layer)
    layers = []
    for layer, block in enumerate(gpt.transformer.h):
        field = block.both_field
        per_batch = []
        for x in states[layer]:
            v0 = torch.randn(x.numel(), generator=gen, dtype=x.dtype)
            ritz, res = arnoldi(jvp_operator(field, x), v0, args.krylov)
            k = min(args.leading, len(ritz))
            per_batch.append({"ritz": ritz[:k], "residual": res[:k]})
        leading = np.concatenate([b["ritz"] for b in per_batch])
        dense_eigs, upper = [], []
        first = states[layer][0]
        for x in [first[i : i + 1] for i in range(min(args.dense_sequences, first.shape[0]))]:
            J = dense_jacobian(field, x, args.jvp_chunk)
            eigs, up = causal_block_spectrum(J, x.shape[1], x.shape[2])
            dense_eigs.append(eigs)
            upper.append(up)
        dense = np.concatenate(dense_eigs) if dense_eigs else np.zeros(0, complex)
        radius = float(np.abs(leading).max())
        dense_radius = float(np.abs(dense).max()) if len(dense) else None
        layers.append(
            {
                "layer": layer,
                "spectral_radius": radius,
                "spectral_radius_per_batch": [float(np.abs(b["ritz"]).max()) for b in per_batch],
                "leading": [
                    {"eigenvalues": complex_list(b["ritz"]), "residuals": b["residual"].tolist()} for b in per_batch
                ],
                "dense": {
                    "sequences": len(dense_eigs),
                    "spectral_radius": dense_radius,
                    "eigenvalues": [[round(v, 6) for v in p] for p in complex_list(dense)],
                    "upper_block_norm": max(upper) if upper else None,
                },
                "stability": {name: stability_summary(coeffs[name], leading, dense, h_ckpt) for name in TABLEAUX},
            }
        )
        progress.step(
            f"layer {layer}: spectral radius {radius:.3f} (Arnoldi, max residual "
            f"{max(float(b['residual'].max()) for b in per_batch):.1e})"
            + (f", {dense_radius:.3f} exact on {len(dense_eigs)} sequence(s)" if dense_radius is not None else "")
        )

    results = {
        "study": STUDY,
        "note": (
            "Eigenvalues of dF_l/dx, F_l = A_l + M_l, at the state entering layer l under the checkpoint's integrator. "
            "'leading': Arnoldi Ritz values on the full (B, T, C) state, per batch. 'dense': exact spectrum of the "
            "first sequences (union of the causal Jacobian's diagonal token blocks). h_max_*: largest stable step "
            "along the ray of the largest decaying mode / the tightest over decaying leading modes (0: unstable at once); "
            "stable_h1 / stable_h_ckpt: |R(h lambda)| <= 1 for every decaying leading mode (None: no decaying leading "
            "mode). Modes with Re lambda >= 0 grow under the exact flow as well and are counted apart "
            "(growing_leading_modes); max_amplification_vs_exact_*: max |R(h lambda)| / |exp(h lambda)| over the "
            "leading modes. "
            "unstable_fraction_*_dense: share of the exact spectrum's decaying modes outside the region."
        ),
        "h_ckpt": h_ckpt,
        "trained_integrator": {"solver": c.solver, "splitting": c.splitting, "steps_per_layer": c.steps_per_layer},
        "state_shape": list(states[0][0].shape),
        "krylov": args.krylov,
        "groups": groups,
        "layers": layers,
    }
    results["run"] = run_record(args, env, info, t0)
    return results


# ---------------------------------------------------------------------------------------------
# plot: reads only the results dict


ZOOM = (-3.2, 1.6, 3.2)  # x from, x to, |y| up to: every region here fits (rk4 reaches -2.79 and +-2.83i)


def _draw_modes(ax, layers, lead, dense, hs, colors, labels: bool) -> int:
    """Plot dense dots and Arnoldi markers; returns how many leading h*lambda fall outside the axes' view."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    outside = 0
    for L, col in zip(layers, colors):
        k = L["layer"]
        if len(dense[k]):
            ax.plot(dense[k].real, dense[k].imag, ".", color=col, ms=2, alpha=0.3)
        for h in hs:
            z = h * lead[k]
            outside += int(((z.real < x0) | (z.real > x1) | (z.imag < y0) | (z.imag > y1)).sum())
            first = h == 1.0
            label = f"layer {k}, h={h:g}" + (f" (spectral radius {L['spectral_radius']:.2f})" if first else "")
            ax.plot(
                z.real,
                z.imag,
                "o" if first else "D",
                ms=6,
                mfc=col if first else "none",
                mec="k" if first else col,
                mew=0.6 if first else 1.3,
                label=label if labels else None,
            )
    return outside


def plot(results: dict, path) -> None:
    plt = pyplot()
    layers = results["layers"]
    groups = results["groups"]
    h_ckpt = results["h_ckpt"]
    hs = [1.0] + ([h_ckpt] if abs(h_ckpt - 1.0) > 1e-12 else [])
    colors = [plt.cm.viridis(i / max(1, len(layers) - 1) * 0.9) for i in range(len(layers))]
    lead = {L["layer"]: np.concatenate([complex_array(b["eigenvalues"]) for b in L["leading"]]) for L in layers}
    dense = {L["layer"]: complex_array(L["dense"]["eigenvalues"]) for L in layers}
    group_colors = [plt.cm.tab10(i) for i in range(len(groups))]

    fig, axes = plt.subplots(2, 3, figsize=(19, 12.5))
    region_axes, (ax_all, ax_rad) = list(axes[0]) + [axes[1, 0]], axes[1, 1:]
    xlo, xhi, yhi = ZOOM
    X, Y = np.meshgrid(np.linspace(xlo, xhi, 500), np.linspace(-yhi, yhi, 500))
    for ax, g, gc in zip(region_axes, groups, group_colors):
        absR = np.abs(poly_eval(g["coefficients"], X + 1j * Y))
        ax.contourf(X, Y, absR, levels=[0, 1], colors=["#cfe3f5"])
        ax.contour(X, Y, absR, levels=[1], colors=[gc], linewidths=1.8)
        ax.set_xlim(xlo, xhi)
        ax.set_ylim(-yhi, yhi)
        outside = _draw_modes(ax, layers, lead, dense, hs, colors, labels=ax is region_axes[0])
        st = [L["stability"][g["solvers"][0]] for L in layers]  # the group's solvers share R(z), hence all this
        hmax = " ".join("-" if s["h_max_leading"] is None else f"{s['h_max_leading']:.2f}" for s in st)
        stable = " ".join("-" if s["stable_h1"] is None else "y" if s["stable_h1"] else "n" for s in st)
        amp = " ".join(f"{s['max_amplification_vs_exact_h1']:.2g}" for s in st)
        ax.set_title(
            f"{', '.join(g['solvers'])}:  {g['label']}\nper layer: h_max {hmax} | stable at h=1: {stable}\n"
            f"|R(h lambda)|/|exp(h lambda)| max at h=1: {amp}",
            fontsize=9,
        )
        if outside:
            ax.text(
                0.02,
                0.02,
                f"{outside} leading h*lambda outside this view (see overview)",
                transform=ax.transAxes,
                fontsize=8,
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"),
            )

    # overview: every mode at true scale, with all region boundaries
    pts = np.concatenate([h * lead[k] for k in lead for h in hs] + [dense[k] for k in dense])
    oxlo = min(xlo, float(pts.real.min()) - 0.5)
    oxhi = max(xhi, float(pts.real.max()) + 0.5)
    oyhi = max(yhi, float(np.abs(pts.imag).max()) + 0.5)
    ax_all.set_xlim(oxlo, oxhi)
    ax_all.set_ylim(-oyhi, oyhi)
    OX, OY = np.meshgrid(np.linspace(oxlo, oxhi, 600), np.linspace(-oyhi, oyhi, 600))
    for g, gc in zip(groups, group_colors):
        ax_all.contour(
            OX, OY, np.abs(poly_eval(g["coefficients"], OX + 1j * OY)), levels=[1], colors=[gc], linewidths=1.3
        )
        ax_all.plot([], [], color=gc, label=f"|R|=1: {', '.join(g['solvers'])}")
    _draw_modes(ax_all, layers, lead, dense, hs, colors, labels=False)
    ax_all.set_title("overview at true scale: all |R(z)| = 1 boundaries", fontsize=9)
    ax_all.legend(fontsize=7, loc="upper left")

    for ax in region_axes + [ax_all]:
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("Re(h lambda)")
        ax.set_ylabel("Im(h lambda)")
        ax.set_aspect("equal")
        ax.grid(True, alpha=0.3)

    # spectral radius per layer: Arnoldi per batch and exact on the first sequence(s)
    idx = np.arange(len(layers))
    nb = max(len(L["spectral_radius_per_batch"]) for L in layers)
    width = 0.8 / (nb + 1)
    for b in range(nb):
        vals = [
            L["spectral_radius_per_batch"][b] if b < len(L["spectral_radius_per_batch"]) else np.nan for L in layers
        ]
        ax_rad.bar(
            idx + b * width,
            vals,
            width,
            label=f"Arnoldi, batch {b} (full state)",
            color=plt.cm.Blues(0.4 + 0.5 * b / nb),
        )
    ax_rad.bar(
        idx + nb * width,
        [np.nan if L["dense"]["spectral_radius"] is None else L["dense"]["spectral_radius"] for L in layers],
        width,
        color="C1",
        label="exact, first sequence(s) of batch 0",
    )
    ax_rad.set_xticks(idx + 0.4 - width / 2, [f"layer {L['layer']}" for L in layers])
    ax_rad.set_ylabel("spectral radius of dF_l/dx")
    ax_rad.set_title(
        "spectral radius per layer: how far h*lambda reaches at h=1 (the regions span |z| <= 2 to 2.8)", fontsize=9
    )
    ax_rad.grid(True, axis="y", alpha=0.3)
    ax_rad.legend(fontsize=8)

    handles, labels = region_axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=9, frameon=False)
    tr = results["trained_integrator"]
    fig.suptitle(
        f"h*lambda of dF_l/dx (F = A + M) at each layer's input state {tuple(results['state_shape'])}, "
        f"trained as {tr['solver']}/{tr['splitting']}x{tr['steps_per_layer']}; shaded: |R(z)| <= 1\n"
        "markers: Arnoldi leading eigenvalues (per batch); dots: exact spectrum of the first sequence(s) at h=1; "
        "h_max and stability over decaying (Re < 0) leading modes, '-' when there are none",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path)


def main(argv=None) -> dict:
    return study_main(STUDY, parse_args(argv), run, plot)


if __name__ == "__main__":
    cli(main)
