"""Reports from a benchmark's JSON alone: benchmark.md (the tables) and benchmark.png (the val-loss curves)."""

from __future__ import annotations

import io
import json
import re
import statistics
from pathlib import Path

from .files import atomic_write_bytes, load_record
from .specs import TIME_WEIGHT, BenchmarkError
from .splits import TEST_FRACTION
from .summary import METRIC_TITLES, METRICS


def shortened_banner(report: dict) -> str | None:
    s = report["settings"]
    if s.get("max_iters") is None:
        return None
    return (
        f"SHORTENED RUNS: TRAIN_MPS_MAX_ITERS={s['max_iters']} instead of the fixed {s.get('fixed_max_iters')} "
        "iterations. A smoke test: these numbers say nothing about the full recipes."
    )


def fmt(x, digits=4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_pm(d: dict, digits=4) -> str:
    if d.get("mean") is None:
        return "n/a"
    return f"{d['mean']:.{digits}f} ± {fmt(d.get('std'), digits)}"


def md_cell(text) -> str:
    return str(text).replace("|", "\\|")


def paired_table(summary: dict, labels: list[str], metrics: tuple, lower: str) -> list[str]:
    lines = [
        "| configuration | " + " | ".join(f"Δ {METRIC_TITLES[m]} median | per seed" for m in metrics) + " | lower |",
        "|---|" + "---|---|" * len(metrics) + "---|",
    ]
    for label in labels:
        p = summary["configs"][label].get("paired_vs_baseline")
        if p is None:
            continue
        cells = [f"`{md_cell(label)}`"]
        for m in metrics:
            digits = 2 if m.endswith("_min") else 4
            per_seed = ", ".join(f"s{sd}: {d:+.{digits}f}" for sd, d in zip(p[m]["seeds"], p[m]["diffs"]))
            cells += [fmt(p[m]["median"], digits) if p[m]["median"] is None else f"{p[m]['median']:+.{digits}f}"]
            cells += [per_seed or "n/a"]
        cells.append(f"{p[lower]['n_lower']}/{len(p[lower]['diffs'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def untrusted_note(runs: list[str], what: str, why: str) -> list[str]:
    """The loud line above the table for runs whose figures are not to be trusted (none: no line)."""
    if not runs:
        return []
    return ["", f"> **UNTRUSTED: {len(runs)} run(s) {what} ({md_cell(', '.join(runs))}): {why}**"]


def render_markdown(report: dict) -> str:
    s, summary = report["settings"], report["summary"]
    labels, baseline = s["configs"], summary["baseline"]
    lines = [f"# Benchmark: {', '.join(f'`{md_cell(c)}`' for c in labels)}", ""]
    banner = shortened_banner(report)
    if banner:
        lines += [f"> **⚠⚠ {banner} ⚠⚠**", ""]
    n_ok = sum(r.get("status") == "ok" for r in report["runs"])
    how = (
        "runs merged from separate benchmarks (listed below)"
        if report.get("merged_from")
        else "runs interleaved per seed (A B … A B …)"
        + (f", {s['jobs']} at a time (times contended alike)" if s.get("jobs", 1) > 1 else "")
    )
    headline = summary.get("headline", "fitness")
    trusted_fitness = summary.get("trusted_fitness", f"trusted_test_loss + {TIME_WEIGHT} * trusted_elapsed_min")
    lines += [
        f"Seeds {', '.join(map(str, s['seeds']))}; {how}, each in a fresh "
        f"subprocess; {n_ok} of {len(report['order'])} runs finished{'' if report.get('complete') else ' (INCOMPLETE)'}. "
        f"Ranked by **{headline}**. Lower is better everywhere. Cells: median (mean ± std) over seeds.",
        "",
        f"The trusted figures are the runner's: trusted test loss = its own cross-entropy of the trained model on the "
        f"held-out test split (the last {TEST_FRACTION:.0%} of val.bin's windows, which the candidate never sees), "
        f"trusted min = its clock around the import and train(), trusted fitness = {trusted_fitness}. The `own` "
        f"figures are the candidate's (its return value, fitness = {summary['fitness']}, and its metrics.json, on "
        "the part of the validation split it was given), kept for continuity. Runs with violations are not ranked.",
    ]
    lines += untrusted_note(
        summary.get("unsandboxed_runs", []),
        "ran without a sandbox",
        "their candidate code could read the held-out split and the runner's records and write anywhere the user "
        "can, so none of their figures is to be trusted.",
    )
    lines += untrusted_note(
        summary.get("untrusted_runs", []),
        "predate the trusted runner",
        "they carry only the candidate's own figures (own best_vloss, whole-split val, elapsed_min), as train() "
        "reported them, on the whole validation split; their trusted columns are n/a.",
    )
    lines += [
        "",
        "| configuration | n | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for label in labels:
        c = summary["configs"][label]
        cells = [f"`{md_cell(label)}`", str(c["n"])]
        for m in METRICS:
            digits = 2 if m.endswith("_min") else 4
            cell = c.get(m, {})
            cells.append(f"{fmt(cell.get('median'), digits)} ({fmt_pm(cell, digits)})")
        lines.append("| " + " | ".join(cells) + " |")
    kn = (report.get("references") or {}).get("kneser_ney")
    if kn:
        row = ", ".join(f"n={n} {fmt(v)}" for n, v in kn["whole_split_val"].items())
        best = min(kn["whole_split_val"].values())
        test = kn.get("heldout_test")
        lines += [
            "",
            f"Reference, not a model: an interpolated modified Kneser-Ney n-gram fitted on the same train.bin "
            f"(`{kn['script']}`), whole-split val {row}; best **{fmt(best)}**."
            + (
                " On the held-out test split (as the trusted test loss): "
                + ", ".join(f"n={n} {fmt(v)}" for n, v in test.items())
                + "."
                if test
                else ""
            )
            + (
                " On the candidate's part of val (as its own figures): "
                + ", ".join(f"n={n} {fmt(v)}" for n, v in kn["candidate_val"].items())
                + "."
                if kn.get("candidate_val")
                else ""
            ),
        ]
    lines += [
        "",
        f"## Paired differences against `{md_cell(baseline)}`",
        "",
        "Configuration minus baseline on the same seed (negative = better); median, then the per-seed values; "
        f"'lower' counts the seeds on which the configuration's {headline} is lower.",
        "",
    ]
    if headline == "trusted_fitness":
        lines += paired_table(
            summary, labels, ("trusted_test_loss", "trusted_fitness", "trusted_elapsed_min"), headline
        )
        lines += ["", "The candidates' own figures (untrusted), for continuity:", ""]
    lines += paired_table(summary, labels, ("best_vloss", "val_loss_full", "fitness", "elapsed_min"), "fitness")
    excluded = summary.get("excluded", [])
    if excluded:
        lines += [
            "",
            "## Runs with violations (not ranked)",
            "",
            "| configuration | seed | violations |",
            "|---|---|---|",
        ]
        lines += [
            f"| `{md_cell(e['config'])}` | {e['seed']} | {md_cell('; '.join(e['violations']))} |" for e in excluded
        ]
    lines += [
        "",
        "## Runs (in execution order)",
        "",
        "| # | configuration | seed | status | trusted test loss | trusted min | steps | batches | "
        "own best_vloss | own whole-split val | own elapsed_min | wall min | own fitness | violations |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["config"], r["seed"]): r for r in report["runs"]}
    for o in report["order"]:
        r = by_key.get((o["config"], o["seed"]), {})
        shapes = ", ".join(f"{k}: {v}" for k, v in (r.get("training_batch_shapes") or {}).items()) or "n/a"
        violations = "n/a (untrusted run)" if "violations" not in r else str(len(r["violations"]))
        lines.append(
            f"| {o['index']} | `{md_cell(o['config'])}` | {o['seed']} | {r.get('status', 'pending')} | "
            f"{fmt(r.get('trusted_test_loss'))} | {fmt(r.get('trusted_elapsed_min'), 2)} | "
            f"{r.get('optimizer_steps', 'n/a')} | {shapes} | "
            f"{fmt(r.get('best_vloss'))} | {fmt(r.get('val_loss_full'))} | {fmt(r.get('elapsed_min'), 2)} | "
            f"{fmt(r.get('wall_min'), 2)} | {fmt(r.get('fitness'))} | {violations} |"
        )
    adapted: dict[str, list[str]] = {}  # per configuration, the adaptations of its first run (the same every seed)
    for r in report["runs"]:
        if r.get("adaptations") and r["config"] not in adapted:
            adapted[r["config"]] = [
                re.sub(r"'[^']*/runs/[^']*'", "<the run's data folder>", a) for a in r["adaptations"]
            ]
    if adapted:
        lines += ["", "## Adapted to run here (the DreamTeam original layout)", ""]
        for c, notes in adapted.items():
            lines += [f"- `{md_cell(c)}`:"] + [f"  - {md_cell(n)}" for n in notes]
    warnings = [(r["config"], r["seed"], w) for r in report["runs"] for w in r.get("warnings", [])]
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- `{md_cell(c)}` seed {sd}: {w}" for c, sd, w in warnings]
    if report.get("resume_warnings"):
        lines += ["", "Kept by --resume from other sources:", ""]
        lines += [f"- WARNING: {md_cell(w)}" for w in report["resume_warnings"]]
    if report.get("merged_from"):
        lines += ["", "Merged from (runs made in separate benchmarks):", ""]
        for m in report["merged_from"]:
            lines.append(f"- `{md_cell(m['dir'])}`: {', '.join(m['runs']) or 'none'}")
            earlier = m.get("earlier") or {}
            lines += [  # a merged report merged again: where its runs came from, and under which labels
                f"  - itself merged from `{md_cell(e['dir'])}`: {', '.join(e['runs']) or 'none'}"
                for e in earlier.get("merged_from") or []
            ]
            lines += [
                f"  - whose runs labelled `{md_cell(k)}` were reported there as `{md_cell(v)}`"
                for k, v in (earlier.get("relabeled") or {}).items()
            ]
        lines += [f"- WARNING: {w}" for w in report.get("merge_warnings", [])]
        lines += [
            f"- runs labelled `{md_cell(k)}` in those folders reported as `{md_cell(v)}` (each run keeps its `recorded_config`)"
            for k, v in report.get("relabeled", {}).items()
        ]
    env = report["environment"]
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: `{md_cell(env[k])}`" for k in env if k != "data"]
    lines += [f"- data: `{md_cell(json.dumps(env.get('data')))}`"]
    for d in s.get("config_details", []):
        lines.append(
            f"- `{md_cell(d['label'])}`: {d['kind']} from `{md_cell(d['origin'])}`, overrides `{d['overrides']}`"
            + (f" (recorded as `{md_cell(d['recorded_label'])}`)" if "recorded_label" in d else "")
        )
    return "\n".join(lines) + "\n"


# an evaluation line as a candidate without metrics.json prints it: DreamTeam's "500: train 6.430  val 6.472",
# nanoGPT's "step 500: train loss 6.4300, val loss 6.4720", with anything after the val loss ("(lr=3.0e-04)")
PRINTED_EVAL = re.compile(
    r"^\s*(?:step\s+)?(\d+): train (?:loss )?[-+0-9.eE]+,?\s+val (?:loss )?([-+0-9.eEnaif]+)(?:[\s,(].*)?$"
)


def printed_curve(log_text: str) -> list[tuple[int, float]]:
    """(iteration, val loss) as the candidate printed its evaluations: the curve of a run without metrics.json."""
    points = []
    for line in log_text.splitlines():
        m = PRINTED_EVAL.match(line)
        if m:
            try:
                points.append((int(m[1]), float(m[2])))
            except ValueError:
                continue
    return points


def run_curve(run: dict, out: Path) -> tuple[list[tuple[int, float]], str]:
    """A run's val-loss curve and where it came from: its metrics.json history ('metrics'), else the evaluations
    its train.log prints ('printed', the candidate's own numbers), else none ('')."""
    history = (run.get("metrics") or {}).get("history") or []
    pts = [(h["iter"], h["val_loss"]) for h in history if "iter" in h and "val_loss" in h]
    if pts:
        return pts, "metrics"
    if run.get("log"):
        try:
            pts = printed_curve((out / run["log"]).read_text(errors="replace"))
        except OSError:
            pts = []
        if pts:
            return pts, "printed"
    return [], ""


def render_png(report: dict, out: Path) -> bytes | None:
    """Val loss vs iteration; thin lines per run, the per-iteration median over seeds bold.

    Left: the whole run; right: its second half, zoomed, where the configurations differ. A run without
    metrics.json (a candidate in DreamTeam's layout) is drawn from the evaluations its train.log in `out` prints."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.get_cmap("tab10")
    curves = []  # (label, color, runs' points, median points)
    sources = set()
    for i, label in enumerate(report["settings"]["configs"]):
        runs, by_iter = [], {}
        for r in report["runs"]:
            if r["config"] != label or r.get("status") != "ok":
                continue
            pts, source = run_curve(r, out)
            sources.add(source)
            if pts:
                runs.append(pts)
            for x, y in pts:
                by_iter.setdefault(x, []).append(y)
        median = [(x, statistics.median(by_iter[x])) for x in sorted(by_iter)]
        curves.append((label, colors(i % 10), runs, median))
    last = max((x for *_, median in curves for x, _ in median), default=0)
    for ax, start in zip(axes, (0, last // 2)):
        ys_shown = []
        for label, color, runs, median in curves:
            for pts in runs:
                xs, ys = zip(*[(x, y) for x, y in pts if x >= start] or [(None, None)])
                if xs[0] is not None:
                    ax.plot(xs, ys, color=color, lw=0.8, alpha=0.35, marker="." if len(xs) <= 20 else None)
                    ys_shown += ys
            shown = [(x, y) for x, y in median if x >= start]
            if shown:
                xs, ys = zip(*shown)
                n = report["summary"]["configs"][label]["n"]
                ax.plot(xs, ys, color=color, lw=2.5, marker="o" if len(xs) <= 20 else None, label=f"{label} ({n} runs)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if start and ys_shown:
            ax.set_ylim(min(ys_shown) - 0.02, max(ys_shown) + 0.02)
    axes[0].set_ylabel("val loss (one batch per evaluation)")
    title = "val loss; thin: runs, bold: median over seeds"
    if "printed" in sources:
        title += "\n(runs without metrics.json: the evaluations their train.log prints)"
    axes[0].set_title(title, fontsize=10)
    if not any(median for *_, median in curves):
        for ax in axes:
            ax.text(0.5, 0.5, "no run recorded a val-loss curve", ha="center", va="center", transform=ax.transAxes)
    axes[1].set_title(f"second half (iteration >= {last // 2}), zoomed", fontsize=10)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    s = report["settings"]
    if s.get("max_iters") is not None:
        banner = f"SHORTENED RUNS: {s['max_iters']} of {s.get('fixed_max_iters')} iterations (smoke test only)"
        fig.suptitle(banner, color="red", fontweight="bold")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_reports(report: dict, out: Path, png: bool = True) -> None:
    atomic_write_bytes(out / "benchmark.md", render_markdown(report).encode())
    if png:
        data = render_png(report, out)
        if data is None:
            print("[benchmark] matplotlib is not installed: no benchmark.png (pip install matplotlib)", flush=True)
        else:
            atomic_write_bytes(out / "benchmark.png", data)


def plot_only(out: Path) -> int:
    report = load_record(out / "benchmark.json")
    if report is None:
        raise BenchmarkError(f"no readable {out / 'benchmark.json'}")
    write_reports(report, out)
    print(f"[benchmark] redrew {out / 'benchmark.md'} and {out / 'benchmark.png'}", flush=True)
    return 0
