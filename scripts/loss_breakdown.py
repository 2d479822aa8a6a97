"""Where the validation loss goes: a checkpoint's whole-split loss broken down by how often each target
token occurs in train.bin and whether it already occurred earlier in its window, plus what post-hoc
calibration of the same weights could gain.

The windows are train_mps.full_split_loss's (non-overlapping block_size windows covering val.bin), so
`total` is the checkpoint's whole-split val loss. Per target token:

    bucket        its count in train.bin: 0, 1-2, 3-10, 11-100, > 100
    in_context    it occurs among the window's inputs up to its position (copyable by attention)
    contribution  the bucket's share of the mean loss (the contributions sum to `total`)

--kneser-ney N adds the count-based reference per bucket: the interpolated Kneser-Ney N-gram of
scripts/kneser_ney.py, fitted on the same train.bin, scored on the same targets with its history cut at each
window's start (kneser_ney.whole_split_loss's protocol), so each bucket shows where the network loses to counting.

Calibration: the same log-probabilities under a temperature T, or mixed with the uniform or the
(add-1/2 smoothed) train.bin unigram distribution at weight w. These are fitted on the validation
split itself, so they are an upper bound on what any output calibration (label smoothing, temperature,
smoothing toward the unigram) could buy, not a method.

    python scripts/loss_breakdown.py                          # out/ckpt.pt -> results/loss_breakdown.{json,png}
    python scripts/loss_breakdown.py --ckpt results/benchmark/X/runs/canonical/seed0/ckpt.pt --out-dir results/X
    python scripts/loss_breakdown.py --ckpt ... --data-dir data/pypi --kneser-ney 4   # with the n-gram's buckets
    python scripts/loss_breakdown.py --plot-only
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _study_common import (
    StudyError,
    base_parser,
    cli,
    load_tokens,
    load_val_tokens,
    pyplot,
    run_record,
    save_figure,
    setup,
    study_main,
)

STUDY = "loss_breakdown"
BUCKETS = ((0, 0), (1, 2), (3, 10), (11, 100), (101, None))  # train.bin count ranges, inclusive
TEMPERATURES = (0.9, 1.0, 1.1, 1.2, 1.3)
MIX_WEIGHTS = (0.0, 0.01, 0.03, 0.1, 0.2)


def parse_args(argv=None):
    p = base_parser(__doc__.split("\n\n")[0], default_batches=0)
    p.add_argument("--chunk", type=int, default=8, help="windows per forward (memory: chunk x 64 x 50304 floats)")
    p.add_argument(
        "--kneser-ney",
        type=int,
        default=0,
        metavar="N",
        help="also break down the Kneser-Ney N-gram's loss on the same targets (0 = off)",
    )
    args = p.parse_args(argv)
    if args.kneser_ney < 0 or args.kneser_ney == 1:
        p.error(f"--kneser-ney must be 0 (off) or an order >= 2, got {args.kneser_ney}")
    return args


def kneser_ney_nll(train: np.ndarray, windows: torch.Tensor, order: int, vocab_size: int) -> np.ndarray:
    """Per target of `windows` (n, T + 1), in row order, -log p under the Kneser-Ney `order`-gram fitted on train,
    its history cut at the window's start: (n * T,) float64."""
    from odegpt_eval import kneser_ney

    lm = kneser_ney.fit(train, order, vocab_size)
    keep, out = order - 1, []
    for window in windows.tolist():
        out += [-np.log(lm.prob(window[max(0, j + 1 - keep) : j + 1], window[j + 1])) for j in range(len(window) - 1)]
    return np.asarray(out)


def bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}" if hi == lo else (f"> {lo - 1}" if hi is None else f"{lo}-{hi}")


@torch.no_grad()
def log_probs(model, idx: torch.Tensor) -> torch.Tensor:
    """(n, T) windows -> (n, T, vocab) log-probabilities (the logits normalized) from the model's own output layer."""
    n, t = idx.shape
    x = model.integrate(model.embed(idx))  # (n, T, C)
    logits, _ = model.head(x.reshape(n * t, 1, -1))  # one position per row: the inference path
    return torch.log_softmax(logits.reshape(n, t, -1).float(), dim=-1)


def run(args) -> dict:
    t0 = time.time()
    model, info, _, env = setup(STUDY, args)
    c = model.config
    train = load_tokens(args.data_dir, "train", c.vocab_size)
    counts = np.bincount(train, minlength=c.vocab_size)
    val = torch.from_numpy(load_val_tokens(args.data_dir, c.vocab_size).astype(np.int64))
    T = c.block_size
    n_windows = (len(val) - 1) // T
    if n_windows < 1:
        raise StudyError(f"val.bin holds {len(val)} tokens, fewer than block_size + 1 = {T + 1}")
    windows = val[torch.arange(n_windows)[:, None] * T + torch.arange(T + 1)[None, :]]  # (n, T+1)

    log_unigram = torch.from_numpy(np.log((counts + 0.5) / (counts.sum() + 0.5 * len(counts)))).float()
    log_uniform = torch.full_like(log_unigram, -np.log(c.vocab_size))
    calib = {("temperature", T_): 0.0 for T_ in TEMPERATURES}
    calib.update({(kind, w): 0.0 for kind in ("uniform", "unigram") for w in MIX_WEIGHTS if w > 0})
    nll_all, seen_all = [], []
    for start in range(0, n_windows, args.chunk):
        chunk = windows[start : start + args.chunk]
        x, y = chunk[:, :-1], chunk[:, 1:]
        lp = log_probs(model, x)  # (n, T, V)
        lp_y = lp.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (n, T): the losses need only the target's terms
        nll_all.append(-lp_y)
        seen_all.append((x.unsqueeze(1) == y.unsqueeze(2)).tril().any(-1))  # y_t among x_0..x_t
        for T_ in TEMPERATURES:
            calib[("temperature", T_)] -= (lp_y / T_ - torch.logsumexp(lp / T_, -1)).sum().item()
        for kind, prior in (("uniform", log_uniform), ("unigram", log_unigram)):
            for w in MIX_WEIGHTS[1:]:
                mix = torch.logaddexp(lp_y + np.log1p(-w), prior[y] + np.log(w))
                calib[(kind, w)] -= mix.sum().item()
        print(f"[{STUDY}] windows {min(start + args.chunk, n_windows)}/{n_windows}", flush=True)
    nll = torch.cat(nll_all).flatten().numpy().astype(np.float64)
    in_ctx = torch.cat(seen_all).flatten().numpy()
    tcount = counts[windows[:, 1:].flatten().numpy()]
    total = float(nll.mean())
    kn = kneser_ney_nll(train, windows, args.kneser_ney, c.vocab_size) if args.kneser_ney else None

    buckets = []
    for lo, hi in BUCKETS:
        in_b = (tcount >= lo) & (tcount <= (hi if hi is not None else np.inf))
        row = {"name": bucket_name(lo, hi), "lo": lo, "hi": hi}
        for part, mask in (("all", in_b), ("in_context", in_b & in_ctx), ("not_in_context", in_b & ~in_ctx)):
            row[part] = {
                "fraction": float(mask.mean()),
                "mean_loss": float(nll[mask].mean()) if mask.any() else None,
                "contribution": float(nll[mask].sum() / len(nll)),
            }
        if kn is not None:
            row["kneser_ney"] = {
                "mean_loss": float(kn[in_b].mean()) if in_b.any() else None,
                "contribution": float(kn[in_b].sum() / len(kn)),
            }
        buckets.append(row)
    n_tok = len(nll)
    calibration = {
        "temperature": {str(k[1]): v / n_tok for k, v in calib.items() if k[0] == "temperature"},
        "uniform_mix": {"0.0": total, **{str(k[1]): v / n_tok for k, v in calib.items() if k[0] == "uniform"}},
        "unigram_mix": {"0.0": total, **{str(k[1]): v / n_tok for k, v in calib.items() if k[0] == "unigram"}},
    }
    best = min(min(d.values()) for d in calibration.values())
    results = {
        "total": total,
        "tokens": n_tok,
        "windows": n_windows,
        "in_context_fraction": float(in_ctx.mean()),
        "buckets": buckets,
        "calibration": calibration,
        "best_calibration_gain": total - best,
        "shortlist_size": c.shortlist_size,
        "kneser_ney": None if kn is None else {"order": args.kneser_ney, "total": float(kn.mean())},
        "run": run_record(args, env, info, t0),
    }
    print(
        f"[{STUDY}] whole-split val {total:.4f} over {n_tok} tokens; best post-hoc calibration gains {total - best:.4f}"
    )
    if kn is not None:
        print(f"[{STUDY}] Kneser-Ney {args.kneser_ney}-gram on the same targets: {kn.mean():.4f}")
    for b in buckets:
        a = b["all"]
        vs = ""
        if kn is not None and b["kneser_ney"]["mean_loss"] is not None:
            k = b["kneser_ney"]
            vs = f" | Kneser-Ney mean {k['mean_loss']:6.2f}, contributes {k['contribution']:.3f}"
        print(
            f"[{STUDY}]   train count {b['name']:>6}: {a['fraction']:6.1%} of tokens, mean {a['mean_loss'] or 0:6.2f}, "
            f"contributes {a['contribution']:.3f}{vs}"
        )
    return results


def plot(results: dict, path) -> None:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [b["name"] for b in results["buckets"]]
    xs = np.arange(len(names))
    inc = [b["in_context"]["contribution"] for b in results["buckets"]]
    notc = [b["not_in_context"]["contribution"] for b in results["buckets"]]
    ax.bar(xs, notc, color="tab:red", label="not earlier in the window")
    ax.bar(xs, inc, bottom=notc, color="tab:blue", label="earlier in the window (copyable)")
    if results.get("kneser_ney"):
        kn = [b["kneser_ney"]["contribution"] for b in results["buckets"]]
        label = f"Kneser-Ney {results['kneser_ney']['order']}-gram, same targets ({results['kneser_ney']['total']:.3f})"
        ax.plot(xs, kn, "k_", markersize=28, markeredgewidth=2, label=label)
    for x, b in zip(xs, results["buckets"]):
        a = b["all"]
        top = b["in_context"]["contribution"] + b["not_in_context"]["contribution"]
        ax.text(
            x,
            top,
            f"{a['fraction']:.1%} of tokens\nmean {a['mean_loss'] or 0:.1f} nats",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(xs, names)
    ax.set_xlabel("target token's count in train.bin")
    ax.set_ylabel("contribution to the mean loss (nats)")
    ax.set_title(f"whole-split val loss {results['total']:.3f}, by the target's train frequency", fontsize=10)
    ax.margins(y=0.2)
    ax.legend(fontsize=8, loc="upper left")
    for key, label in (("uniform_mix", "mix with uniform"), ("unigram_mix", "mix with train unigram")):
        d = results["calibration"][key]
        ax2.plot([float(k) for k in d], list(d.values()), "o-", label=label)
    ax2.set_xlabel("mixture weight w")
    ax2.set_ylabel("whole-split val loss")
    ax3 = ax2.twiny()
    d = results["calibration"]["temperature"]
    ax3.plot([float(k) for k in d], list(d.values()), "s--", color="tab:green", label="temperature T (top axis)")
    ax3.set_xlabel("temperature T")
    lines = ax2.get_legend_handles_labels()
    lines3 = ax3.get_legend_handles_labels()
    ax2.legend(lines[0] + lines3[0], lines[1] + lines3[1], fontsize=8)
    ax2.set_title(
        f"post-hoc calibration, fitted on val itself (an upper bound): best gain {results['best_calibration_gain']:.3f}",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> dict:
    return study_main(STUDY, parse_args(argv), run, plot)


if __name__ == "__main__":
    cli(main)
