"""Loss against time or kernels, and loss against width: issues #16's and #35's pictures, drawn from saved results
only (trains nothing).

    python scripts/plot_tradeoff.py \\
        --report results/benchmark/issue16_loo_tinyshakespeare results/benchmark/issue16_loo_pypi \\
        --bench results/bench_teacher/bench_teacher.json results/bench_levers/bench_levers.json \\
        --probes results/issue16_probe/*.json --out results/tradeoff_issue16.png
    python scripts/plot_tradeoff.py --report results/benchmark/issue35_decision results/benchmark/issue35_screen \\
        --kernels results/bench_dispatch_issue35.json results/bench_dispatch.json --out results/tradeoff_issue35.png

One panel per benchmark report: each configuration's trusted test loss (median over its ranked seeds, the
seeds' range as a bar) against its step time relative to the baseline's, measured side by side by
scripts/bench_integrators.py (--bench; a configuration is matched by name, the first file that has it wins;
one without a step time is listed and left out). With --kernels instead of --bench, the horizontal axis is the
kernels a training step dispatches relative to the baseline's, counted by scripts/bench_dispatch.py
(deterministic: on a launch-bound MPS or CUDA step they are its time, issue #32). Beside them, the best
Kneser-Ney order on the same test half and the target, kneser_ney.TARGET_MARGIN below it (--target-margins: one
per report, for issue #35's offline corpus whose target is the Kneser-Ney line itself, 0). The vertical line is the
baseline's step: the budget.

With --probes, one more panel: scripts/fixed_block_probe.py's results against the residual stream's width
(n_embd), each seed a point, the median a line, the train slice (text the model was fitted on) dashed, the
same two horizontal lines. Probes that change anything other than n_embd are drawn at their width with their own
marker and named in the legend.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odegpt_eval import kneser_ney  # noqa: E402
from odegpt_eval.files import atomic_write_bytes  # noqa: E402


class PlotError(ValueError):
    """A missing or unusable input; the message names the fix."""


def read(path: Path, made_by: str) -> dict:
    if path.is_dir():
        path = path / "benchmark.json"
    if not path.exists():
        raise PlotError(f"{path} not found: run {made_by} first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PlotError(f"{path} is not JSON ({e}): rerun {made_by}") from e


def step_ratios(bench_paths: list[Path]) -> dict[str, float]:
    """Configuration name -> median step time / the baseline's, from bench_integrators.py's JSONs."""
    ratios: dict[str, float] = {}
    for path in bench_paths:
        for c in read(path, "scripts/bench_integrators.py").get("configs", []):
            ratios.setdefault(c["name"], c["median_ratio"])
    return ratios


def kernel_ratios(paths: list[Path]) -> dict[str, float]:
    """Configuration name -> kernels per training step / the baseline's in the same file, from bench_dispatch.py's
    JSONs (the first file that has a name wins)."""
    ratios: dict[str, float] = {}
    for path in paths:
        configs = read(path, "scripts/bench_dispatch.py").get("configs", [])
        base = next((c["step_kernels"] for c in configs if c.get("name") == "baseline"), None)
        if not base:
            raise PlotError(f"{path} has no baseline count to divide by: run scripts/bench_dispatch.py with baseline")
        for c in configs:
            ratios.setdefault(c["name"], c["step_kernels"] / base)
    return ratios


def best_kneser_ney(report: dict) -> tuple[int, float] | None:
    return kneser_ney.best_order(((report.get("references") or {}).get("kneser_ney") or {}).get("heldout_test"))


def tradeoff_points(report: dict, ratios: dict[str, float]) -> tuple[list[dict], list[str]]:
    """(configurations with a trusted test loss and a step time, names left out for want of one)."""
    points, missing = [], []
    for name, c in report["summary"]["configs"].items():
        values = (c.get("trusted_test_loss") or {}).get("values") or []
        if not values:
            continue
        if name not in ratios:
            missing.append(name)
            continue
        points.append(
            {
                "name": name,
                "ratio": ratios[name],
                "median": statistics.median(values),
                "lo": min(values),
                "hi": max(values),
            }
        )
    return points, missing


def probe_points(paths: list[Path]) -> list[dict]:
    """fixed_block_probe.py's results: width, what else was changed, seed, test and train-slice losses."""
    out = []
    for path in paths:
        r = read(path, "scripts/fixed_block_probe.py")
        if "trusted_test_loss" not in r:
            raise PlotError(f"{path} is not a fixed_block_probe.py result (no trusted_test_loss)")
        other = {k: v for k, v in (r.get("set") or {}).items() if k != "n_embd"}
        out.append(
            {
                "n_embd": r["model_args"]["n_embd"],
                "other": ", ".join(f"{k}={v}" for k, v in sorted(other.items())),
                "seed": r["seed"],
                "test": r["trusted_test_loss"],
                "train": r["train_slice_loss"],
                "kneser_ney": (kneser_ney.best_order(r.get("kneser_ney_heldout_test")) or (None, None))[1],
            }
        )
    return out


def label(report: dict, path: Path) -> str:
    settings = report.get("settings") or {}
    name = f"data/{Path(settings['data_dir']).name}" if settings.get("data_dir") else str(path)
    return f"{name}, {settings['max_iters']}-iteration screen" if settings.get("max_iters") else name


def panel(path: Path, report: dict, ratios: dict[str, float]) -> dict:
    """One loss-against-time panel: its title, points, configurations left out, best Kneser-Ney order."""
    points, missing = tradeoff_points(report, ratios)
    return {"label": label(report, path), "points": points, "missing": missing, "kneser_ney": best_kneser_ney(report)}


# the horizontal axis, by the option that gave it: (label, the budget line's, a point's word, a missing point's line)
AXES = {
    "time": (
        "step time / the baseline's (side by side)",
        "the baseline's step (budget)",
        "step",
        "no step time in --bench, left out (run scripts/bench_integrators.py with it)",
    ),
    "kernels": (
        "kernels per training step / the baseline's (bench_dispatch)",
        "the baseline's kernels (budget)",
        "kernels",
        "no count in --kernels, left out (run scripts/bench_dispatch.py with it)",
    ),
}


def draw(panels: list[dict], probes: list[dict], axis: str = "time", margins: list[float] | None = None):
    """margins: per panel, the target's distance below the best Kneser-Ney order (default TARGET_MARGIN each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels) + bool(probes)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 6.4), squeeze=False)
    names = list(dict.fromkeys(pt["name"] for p in panels for pt in p["points"]))
    palette = [f"C{i}" for i in range(10)] if len(names) <= 10 else [plt.cm.tab20(i) for i in range(20)]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(names)}  # one per configuration, every panel
    margins = margins or [kneser_ney.TARGET_MARGIN] * len(panels)
    for ax, p, margin in zip(axes[0], panels, margins):
        for pt in p["points"]:
            ax.errorbar(
                pt["ratio"],
                pt["median"],
                yerr=[[pt["median"] - pt["lo"]], [pt["hi"] - pt["median"]]],
                fmt="o",
                color=colours[pt["name"]],
                capsize=3,
                label=pt["name"],
            )
        reference_lines(ax, p["kneser_ney"], margin)
        xlabel, budget, _, _ = AXES[axis]
        ax.axvline(1.0, color="grey", lw=1, ls=":", label=budget)
        ax.set_xlim(0, max([1.1] + [pt["ratio"] * 1.1 for pt in p["points"]]))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("trusted test loss (nats), median and range over seeds")
        ax.set_title(f"{p['label']}: loss against {axis}", fontsize=10)
        below(ax)
        ax.grid(alpha=0.3)
    if probes:
        ax = axes[0][-1]
        plain = [p for p in probes if not p["other"]]
        widths = sorted({p["n_embd"] for p in plain})
        for key, line, marker, colour, name in (
            ("test", "-", "o", "C0", "held-out test half"),
            ("train", "--", "s", "C2", "train slice"),
        ):
            ax.plot([p["n_embd"] for p in plain], [p[key] for p in plain], marker, color=colour, alpha=0.45)  # seeds
            medians = [statistics.median(p[key] for p in plain if p["n_embd"] == w) for w in widths]
            ax.plot(widths, medians, line + marker, color=colour, lw=2, label=f"{name}, median over seeds")
        for i, other in enumerate(sorted({p["other"] for p in probes if p["other"]})):
            mine = [p for p in probes if p["other"] == other]
            ax.plot(
                [p["n_embd"] for p in mine],
                [p["test"] for p in mine],
                "^",
                color=f"C{3 + i}",
                ms=8,
                label=f"{other} (test)",
            )
        kn = [p["kneser_ney"] for p in probes if p["kneser_ney"] is not None]
        reference_lines(ax, (None, min(kn)) if kn else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths or [32])
        ax.set_xticklabels([str(w) for w in widths or [32]])
        ax.set_xlabel("n_embd (the fixed block's is 32; wider is outside the harness's rules)")
        ax.set_ylabel("loss (nats)")
        ax.set_title("probes outside the fixed block: loss against width")
        below(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def below(ax) -> None:
    """The legend under the panel, where it hides no point."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)


def reference_lines(ax, best: tuple[int | None, float] | None, margin: float = kneser_ney.TARGET_MARGIN) -> None:
    """The best Kneser-Ney order's line and the target's, margin below it (margin 0: the Kneser-Ney line is the
    target, labelled so)."""
    if best is None:
        return
    order, value = best
    target = ", the target (at or below it)" if margin == 0 else ""
    ax.axhline(
        value, color="black", lw=1, label=f"best Kneser-Ney{f' (n = {order})' if order else ''}: {value:.3f}{target}"
    )
    if margin == 0:
        return
    ax.axhline(
        value - margin,
        color="red",
        lw=1,
        ls="--",
        label=f"best Kneser-Ney - {margin:.2f} (target): {value - margin:.3f}",
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--report", type=Path, nargs="+", required=True, help="benchmark folders or benchmark.json files")
    x = p.add_mutually_exclusive_group(required=True)
    x.add_argument("--bench", type=Path, nargs="+", help="bench_integrators.py JSONs (step times)")
    x.add_argument("--kernels", type=Path, nargs="+", help="bench_dispatch.py JSONs (kernels per training step)")
    p.add_argument("--probes", type=Path, nargs="*", default=[], help="fixed_block_probe.py result JSONs")
    p.add_argument(
        "--target-margins",
        type=float,
        nargs="+",
        help=f"one per --report: the target's distance below the best Kneser-Ney order (default {kneser_ney.TARGET_MARGIN}"
        " each, issue #16's; 0 = at or below the Kneser-Ney line, issue #35's offline target)",
    )
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if a.out.suffix != ".png":
            raise PlotError(f"--out {a.out}: give a .png path")
        if a.target_margins is not None and len(a.target_margins) != len(a.report):
            raise PlotError(
                f"--target-margins: {len(a.target_margins)} given for {len(a.report)} reports: give one per --report"
            )
        if a.target_margins is not None and any(not math.isfinite(m) or m < 0 for m in a.target_margins):
            raise PlotError(f"--target-margins {a.target_margins}: each a finite number >= 0")
        ratios = step_ratios(a.bench) if a.bench else kernel_ratios(a.kernels)
        reports = [(path, read(path, "scripts/benchmark.py")) for path in a.report]
        probes = probe_points([p for p in a.probes if p.suffix == ".json"])
    except PlotError as e:
        print(f"plot_tradeoff: {e}", file=sys.stderr)
        return 2
    panels = [panel(path, report, ratios) for path, report in reports]
    axis = "time" if a.bench else "kernels"
    _, _, word, missing = AXES[axis]
    for p in panels:
        kn = p["kneser_ney"]
        print(f"{p['label']}: best Kneser-Ney {kn[1]:.4f} (n = {kn[0]})" if kn else f"{p['label']}:")
        for pt in p["points"]:
            print(
                f"  {pt['name']}: {word} x{pt['ratio']:.2f}, trusted test {pt['median']:.4f} "
                f"({pt['lo']:.4f}..{pt['hi']:.4f})"
            )
        for name in p["missing"]:
            print(f"  {name}: {missing}")
    fig = draw(panels, probes, axis, a.target_margins)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(a.out, buf.getvalue())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
