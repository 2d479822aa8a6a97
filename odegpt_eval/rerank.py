"""Re-rank one recorded DreamTeam generation by the trusted runner's figures, several seeds, side by side.

DreamTeam (github.com/kevinbdsouza/DreamTeam) records each generation in
`src/dreamteam/dreamteam_generations/gen_N/`: one folder per specialist holding the files its reply changed
(a file it left out is the starting file, unchanged) and `results.txt`, one line per candidate,
`name: vloss=X, time=Y min`, best first. Each of those figures is one unseeded run, ranked by the candidate's own
returned best_vloss. This script takes such a generation from a local DreamTeam checkout and:

1. picks the baseline and the recorded top N (or the names given);
2. assembles each candidate as the harness does, its own train_mps.py / model.py or else the starting file, in
   <out>/candidates/<name>/;
3. runs scripts/benchmark.py on them (--seeds, --jobs; --resume finishes an interrupted run): the DreamTeam original
   layout is adapted to run here (its data folder literal, device 'mps' where there is no MPS, a seed), each change
   listed in benchmark.md;
4. writes <out>/rerank.md and rerank.json: the recorded figure and rank beside the trusted test loss (median over
   seeds), its paired difference against the baseline, the trusted rank (equal medians share one), whether the
   recorded order survives (each candidate strictly better than the next), and which candidates train exactly as
   the baseline (every seed's figures equal to the last bit: the seeded runs make a candidate that changed nothing
   but its data path show up as such, and its recorded gap then measures the recorded figures' noise).

Runs are keyed by the candidate folders' paths as given: keep --out relative (the default in `make rerank-gen1`) and
run from the repository root, so that --resume finds the finished runs from another checkout.

The starting files are looked for in gen_N/baseline/ (the current main.py keeps them there), then in src/dreamteam/
two folders up (the older layout); --base names another folder.

    python scripts/rerank_generation.py --generation ../DreamTeam/src/dreamteam/dreamteam_generations/gen_1 \\
        --top 3 --data-dir data/tinyshakespeare --seeds 0 1 2 --jobs 2 --out results/rerank/gen_1
    python scripts/rerank_generation.py --generation ... --out results/rerank/gen_1 --resume
    python scripts/rerank_generation.py --generation ... --out results/rerank/gen_1 --render-only  # tables again
    python scripts/rerank_generation.py --generation ... --out /tmp/smoke --seeds 0 --max-iters 30   # smoke

Exit status: that of the benchmark (0 all runs clean, 1 some run failed or broke the contract, 2 a usage or input
error, 130 interrupted).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

from . import benchmark
from .files import atomic_write_bytes, atomic_write_json
from .report import fmt  # one number format for both reports
from .specs import ROOT, SOURCE_FILES

FILES = SOURCE_FILES  # model.py, train_mps.py
BASELINE = "baseline"
RESULT_LINE = re.compile(r"^\s*([^:\s][^:]*?)\s*:\s*vloss=([^,\s]+)\s*,\s*time=([^\s]+)\s*min\s*$")


class RerankError(RuntimeError):
    """A usage or input error; the message says what to change."""


def parse_results(path: Path) -> list[dict]:
    """results.txt -> [{name, vloss, time_min, rank}] in the recorded order (rank 1 = best; inf scores unranked)."""
    if not path.is_file():
        raise RerankError(f"no results.txt in {path.parent}: pass the gen_N folder of a DreamTeam checkout")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = RESULT_LINE.match(line)
        if not m:
            raise RerankError(f"{path}:{i}: expected 'name: vloss=X, time=Y min', got {line!r}")
        rows.append({"name": m.group(1), "vloss": float(m.group(2)), "time_min": float(m.group(3))})
    rows.sort(key=lambda r: r["vloss"])  # stable: ties keep the file's order
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank if math.isfinite(r["vloss"]) else None
    return rows


def base_folder(generation: Path, base: Path | None) -> Path:
    tried = [base] if base is not None else [generation / BASELINE, generation.parent.parent]
    for folder in tried:
        if all((folder / f).is_file() for f in FILES):
            return folder
    raise RerankError(
        "no starting files (model.py and train_mps.py) in " + ", ".join(str(t) for t in tried) + "; pass --base "
        "with the folder holding the generation's starting files (src/dreamteam in a DreamTeam checkout)"
    )


def pick(rows: list[dict], names: list[str] | None, top: int) -> list[str]:
    """The baseline first, then the given names or the recorded top `top` (finite scores, the baseline skipped)."""
    known = {r["name"] for r in rows}
    if names:
        unknown = [n for n in names if n not in known and n != BASELINE]
        if unknown:
            raise RerankError(f"not in results.txt: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        chosen = [n for n in names if n != BASELINE]
    else:
        chosen = [r["name"] for r in rows if r["name"] != BASELINE and r["rank"] is not None][:top]
    return [BASELINE, *chosen]


def assemble(generation: Path, base: Path, names: list[str], dest: Path) -> dict[str, dict]:
    """<dest>/<name>/ with both files, as the harness runs a candidate. Returns, per name, where each file came
    from. Files already there must match (a --resume of the same generation), else RerankError."""
    origins: dict[str, dict] = {}
    for name in names:
        own = base if name == BASELINE else generation / name
        if not own.is_dir():
            raise RerankError(f"{own} is not a folder: results.txt names {name!r}, the generation lacks its files")
        folder = dest / name
        origins[name] = {}
        for f in FILES:
            src = own / f if (own / f).is_file() else base / f
            data = src.read_bytes()
            target = folder / f
            if target.exists() and target.read_bytes() != data:
                raise RerankError(
                    f"{target} differs from {src}: another generation was assembled here; use another --out"
                )
            if not target.exists():
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(target, data)
            origins[name][f] = "own" if src.parent == own and name != BASELINE else "starting file"
    return origins


def rerank(rows: list[dict], names: list[str], labels: dict[str, str], report: dict) -> dict:
    """The comparison: recorded figure and rank beside the trusted ones (from benchmark.json's summary)."""
    recorded = {r["name"]: r for r in rows}
    configs = report["summary"]["configs"]
    figures = {}  # per configuration, seed -> what the runner measured and what the candidate returned (ranked runs)
    for label in labels.values():
        c = configs.get(label, {})
        values = [c.get(m, {}).get("values", []) for m in ("trusted_test_loss", "best_vloss")]
        figures[label] = dict(zip(c.get("seeds", []), zip(*values)))
    base = figures[labels[BASELINE]]
    out = []
    for name in names:
        c = configs.get(labels[name], {})
        paired = (c.get("paired_vs_baseline") or {}).get("trusted_test_loss") or {}
        out.append(
            {
                "name": name,
                "recorded_vloss": recorded.get(name, {}).get("vloss"),
                "recorded_rank": recorded.get(name, {}).get("rank"),
                "seeds": c.get("seeds", []),
                "trusted_test_loss": c.get("trusted_test_loss", {}).get("values", []),
                "trusted_test_loss_median": c.get("trusted_test_loss", {}).get("median"),
                "own_best_vloss_median": c.get("best_vloss", {}).get("median"),
                "trusted_min_median": c.get("trusted_elapsed_min", {}).get("median"),
                "paired_vs_baseline": paired.get("diffs"),
                "paired_median": paired.get("median"),
                "seeds_lower": paired.get("n_lower"),
                "own_best_vloss": [figures[labels[name]][k][1] for k in sorted(figures[labels[name]])],
                # the same training as the baseline's: every seed's figures equal to the last bit (runs are seeded),
                # on each of the candidate's seeds the baseline has finished too
                "same_as_baseline": (
                    None
                    if name == BASELINE or not base or not figures[labels[name]].keys() <= base.keys()
                    else all(v == base[k] for k, v in figures[labels[name]].items())
                ),
            }
        )
    # ranked on the seeds every candidate has finished: medians over different seeds would rank the seeds (an
    # unfinished run leaves a candidate's median on its luckier seeds); complete, these are all the seeds
    common = sorted(set.intersection(*(set(figures[labels[n]]) for n in names))) if names else []
    for r in out:
        mine = figures[labels[r["name"]]]
        r["rank_figure"] = statistics.median(mine[k][0] for k in common) if common else None
    scored = sorted((r for r in out if r["rank_figure"] is not None), key=trusted)
    for r in scored:  # equal medians share a rank (1, 2, 2, 4)
        r["trusted_rank"] = 1 + sum(trusted(o) < trusted(r) for o in scored)
    by_record = sorted(out, key=lambda r: (r["recorded_vloss"] is None, r["recorded_vloss"] or 0))
    complete = len(scored) == len(out) and all(len(r["seeds"]) == len(report["settings"]["seeds"]) for r in out)
    return {
        "rows": out,
        "ranked_on_seeds": common,
        "recorded_order": [r["name"] for r in by_record],
        "trusted_order": [r["name"] for r in scored],
        "trusted_ties": [[a["name"], b["name"]] for a, b in zip(scored, scored[1:]) if trusted(a) == trusted(b)],
        "complete": complete,
        # each candidate strictly better than the next one in the recorded order (a tie does not uphold it)
        "order_survives": all(trusted(a) < trusted(b) for a, b in zip(by_record, by_record[1:])) if complete else None,
    }


def trusted(row: dict) -> float:
    """What ranks: the trusted test loss's median over the seeds every candidate has finished."""
    return row["rank_figure"]


def ranked_on(result: dict) -> str:
    """'' when every seed is in; else which seeds the order stands on (those every candidate has finished)."""
    if result["complete"]:
        return ""
    seeds = result.get("ranked_on_seeds") or []
    return f" (on seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds)) or 'none'}: those every candidate has finished)"


def order_text(names: list[str], ties: list[list[str]]) -> str:
    """'a > b = c': '=' between neighbours whose trusted medians are equal."""
    tied = {tuple(t) for t in ties}
    text = names[0] if names else ""
    for a, b in zip(names, names[1:]):
        text += (" = " if (a, b) in tied else " > ") + b
    return text


def render(result: dict, generation: Path, report: dict, origins: dict) -> str:
    s = report["settings"]
    kn = ((report.get("references") or {}).get("kneser_ney") or {}).get("heldout_test") or {}
    lines = [
        f"# Re-ranking {generation.name} by trusted figures",
        "",
        f"Generation: `{generation}`. Recorded: one unseeded run each on the harness's machine, ranked by the "
        f"candidate's own best_vloss. Trusted: scripts/benchmark.py, seeds {s['seeds']}, data `{s.get('data_dir')}`, "
        "the test loss the runner computes on the held-out half of val (median over seeds); paired = candidate "
        "minus baseline on the same seed, negative = better.",
    ]
    if result.get("base"):
        lines += ["", f"Starting files (the baseline's, and any file a candidate left out): `{result['base']}`."]
    if s.get("max_iters") is not None:
        lines += ["", f"**SHORTENED RUNS ({s['max_iters']} iterations): a smoke test, not a ranking.**"]
    if not result["complete"]:
        lines += ["", "**Incomplete: some runs are missing or have violations; `--resume` finishes it.**"]
    drift = report.get("resume_warnings") or []
    if drift:
        lines += [
            "",
            f"**{len(drift)} run(s) kept by `--resume` trained with other copies of the files than the rest** "
            "(listed in `benchmark/benchmark.md`; a lost starting file re-made, say): compare their figures "
            "knowing that.",
        ]
    lines += [
        "",
        "| candidate | files changed | recorded vloss | recorded rank | trusted test loss (median) | per seed | "
        "paired vs baseline (median) | seeds lower | own best_vloss (median) | trusted min | trusted rank |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        changed = ", ".join(f for f, o in origins[r["name"]].items() if o == "own") or "none"
        per_seed = ", ".join(fmt(v) for v in r["trusted_test_loss"]) or "n/a"
        lines.append(
            f"| {r['name']} | {changed} | {fmt(r['recorded_vloss'])} | {r['recorded_rank'] or 'n/a'} | "
            f"{fmt(r['trusted_test_loss_median'])} | {per_seed} | {fmt(r['paired_median'])} | "
            f"{'n/a' if r['seeds_lower'] is None else str(r['seeds_lower']) + '/' + str(len(r['paired_vs_baseline'] or []))} | "
            f"{fmt(r['own_best_vloss_median'])} | {fmt(r['trusted_min_median'], 1)} | {r.get('trusted_rank', 'n/a')} |"
        )
    base = result["rows"][0]
    for r in result["rows"][1:]:
        if r["same_as_baseline"]:
            gap = (
                None
                if None in (r["recorded_vloss"], base["recorded_vloss"])
                else r["recorded_vloss"] - base["recorded_vloss"]
            )
            lines += [
                "",
                f"{r['name']} trains exactly as the baseline: on each of its {len(r['seeds'])} seed(s) its trusted "
                "test loss and returned best_vloss equal the baseline's to the last bit. Its recorded gap to the baseline "
                f"({fmt(gap)}) is what one unseeded run of the same code varies by.",
            ]
    own = [v for v in base["own_best_vloss"] if v is not None]
    if len(own) > 1:
        lines += [
            "",
            f"The baseline's own best_vloss over the seeds: {', '.join(fmt(v) for v in own)} (a spread of "
            f"{fmt(max(own) - min(own))}): the scale of the recorded figures' one-run noise.",
        ]
    if kn:
        lines += [
            "",
            "Reference (not a model): Kneser-Ney on the same held-out split, "
            + ", ".join(f"n={n} {fmt(v)}" for n, v in kn.items())
            + ".",
        ]
    lines += [
        "",
        f"Recorded order: {' > '.join(result['recorded_order'])}.",
        f"Trusted order{ranked_on(result)}: "
        f"{order_text(result['trusted_order'], result.get('trusted_ties', [])) or 'n/a'}.",
        "Order survives: "
        + ("n/a (incomplete)" if result["order_survives"] is None else "yes" if result["order_survives"] else "no")
        + ".",
        "",
        "The benchmark's own report, with every run, its adaptations and violations: `benchmark/benchmark.md`.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--generation", type=Path, required=True, help="gen_N folder of a DreamTeam checkout (has results.txt)"
    )
    p.add_argument(
        "--base", type=Path, help="folder of the starting files (default gen_N/baseline, then src/dreamteam)"
    )
    p.add_argument(
        "--names", nargs="+", help="candidates to rank beside the baseline (default: the recorded top --top)"
    )
    p.add_argument("--top", type=int, default=3, help="how many of the recorded best to take (default 3)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "tinyshakespeare")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--max-iters", type=int, help="shortened smoke runs (reported loudly)")
    p.add_argument("--timeout-min", type=float, help="per run (the benchmark's default otherwise)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="keep the finished runs in --out; run the rest")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: write rerank.md/.json again from --out's benchmark.json (runs finished so far)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if a.top < 1:
            raise RerankError(f"--top must be >= 1, got {a.top}")
        generation = a.generation.resolve()
        rows = parse_results(generation / "results.txt")
        base = base_folder(generation, a.base)
        names = pick(rows, a.names, a.top)
        origins = assemble(generation, base, names, a.out / "candidates")
    except RerankError as e:
        print(f"[rerank] error: {e}", file=sys.stderr, flush=True)
        return 2
    labels = {n: str(a.out / "candidates" / n) for n in names}
    report_path = a.out / "benchmark" / "benchmark.json"
    print(f"[rerank] {generation.name}: {', '.join(names)} (starting files from {base})", flush=True)
    if a.render_only:
        if not report_path.is_file():
            print(f"[rerank] error: no {report_path}: run without --render-only first", file=sys.stderr, flush=True)
            return 2
        return write_result(rows, names, labels, generation, base, origins, report_path, 0)
    cmd = [
        "--configs",
        *labels.values(),
        "--baseline",
        labels[BASELINE],
        "--seeds",
        *map(str, a.seeds),
        "--jobs",
        str(a.jobs),
        "--data-dir",
        str(a.data_dir),
        "--out",
        str(a.out / "benchmark"),
    ]
    cmd += ["--resume"] if a.resume else []
    cmd += ["--max-iters", str(a.max_iters)] if a.max_iters is not None else []
    cmd += ["--timeout-min", str(a.timeout_min)] if a.timeout_min is not None else []
    status = benchmark.main(cmd)
    if not report_path.is_file():
        return status
    return write_result(rows, names, labels, generation, base, origins, report_path, status)


def write_result(rows, names, labels, generation, base, origins, report_path: Path, status: int) -> int:
    """rerank.json and rerank.md beside the benchmark folder, from its report (atomic writes); returns status."""
    report = json.loads(report_path.read_text())
    result = rerank(rows, names, labels, report)
    result.update(generation=str(generation), base=str(base), files=origins, benchmark=str(report_path))
    out = report_path.parent.parent
    atomic_write_json(out / "rerank.json", result)
    text = render(result, generation, report, origins)
    atomic_write_bytes(out / "rerank.md", text.encode("utf-8"))
    print(text, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
