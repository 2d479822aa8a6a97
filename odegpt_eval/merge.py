"""One report from the finished runs of several benchmark folders (--merge), each run re-judged by today's rules."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from .environment import environment
from .files import atomic_write_json, load_record
from .judge import judge_run, vloss_slack
from .references import reference_losses
from .report import render_markdown, write_reports
from .specs import BenchmarkError, builtin_recipe_class, recipe_drift
from .summary import summarize


def rejudge(record: dict, folder: Path, slack: float) -> dict:
    """A finished trusted run judged again by today's rules (judge_run) from the findings the runner saved beside it
    (returned.json), so that one merged report applies one set of rules. Runs made before the trusted runner, or
    whose findings are gone, are kept as recorded; a changed verdict keeps the old one in `rejudged_from`."""
    if "violations" not in record or record.get("expected_iters") is None:
        return record
    returned = load_record(folder / Path(record["log"]).parent / "returned.json")
    if not returned or "trusted" not in returned:
        return record
    r = {**record, "violations": []}
    judge_run(r, returned, record["expected_iters"], record.get("layout", "module"), slack)
    if r["violations"] != record["violations"]:
        r["rejudged_from"] = record["violations"]
    return r


def merge(a: argparse.Namespace, argv: list[str]) -> int:
    """One report from the finished runs of several benchmark folders: runs made side by side in
    separate processes, or on several days. Nothing is run; each run keeps its own record (sources'
    sha256, environment); a configuration whose sources differ between folders is reported."""
    if a.out is None:
        raise BenchmarkError("--merge needs --out (the folder of the merged report)")
    if a.resume or a.max_iters is not None or a.timeout_min is not None:
        raise BenchmarkError("--merge takes only --configs, --seeds, --baseline, --relabel and --out")
    relabel = dict(a.relabel or [])
    if len(relabel) != len(a.relabel or []):
        raise BenchmarkError(f"--relabel names a recorded label twice: {a.relabel}")
    reports, picks = [], {}
    for spec in a.merge:
        d, *only = str(spec).split("@")  # DIR@LABEL@LABEL: only those configurations of that folder
        d = Path(d)
        report = load_record(d / "benchmark.json")
        if report is None:
            raise BenchmarkError(f"no readable {d / 'benchmark.json'}; run that benchmark (or --resume it) first")
        reports.append((d, report))
        picks[d] = set(only)
    shortened = {r["settings"]["max_iters"] for _, r in reports}
    data = {json.dumps(r["environment"].get("data", {}).get("val.bin")) for _, r in reports}
    if len(shortened) > 1 or len(data) > 1:
        raise BenchmarkError("the folders differ in --max-iters or in the data (val.bin): their runs do not compare")
    runs, origin, details, labels = {}, {}, {}, []
    for d, report in reports:
        for detail in report["settings"].get("config_details", []):
            if detail["label"] in relabel:
                # a report merged twice keeps the label its runs were first recorded under
                detail = {
                    **detail,
                    "label": relabel[detail["label"]],
                    "recorded_label": detail.get("recorded_label", detail["label"]),
                }
            details.setdefault(detail["label"], []).append((d, detail))
        for r in report["runs"]:
            if r.get("status") != "ok" or (picks[d] and r["config"] not in picks[d]):
                continue
            if r["config"] in relabel:
                r = {**r, "config": relabel[r["config"]], "recorded_config": r.get("recorded_config", r["config"])}
            if (a.configs and r["config"] not in a.configs) or (a.seeds and r["seed"] not in a.seeds):
                continue
            key = (r["config"], r["seed"])
            if key in runs:
                raise BenchmarkError(f"{r['config']} seed {r['seed']} is in both {origin[key]} and {d}: pick one")
            runs[key], origin[key] = r, d
            if r["config"] not in labels:
                labels.append(r["config"])
    labels = [c for c in (a.configs or labels) if c in labels]
    if not labels:
        raise BenchmarkError(f"no finished runs of {a.configs or 'any configuration'} in {[str(d) for d in a.merge]}")
    baseline = a.baseline or labels[0]
    if baseline not in labels:
        raise BenchmarkError(f"--baseline {baseline!r} has no finished runs among {labels}")
    references = reference_losses(Path(reports[0][1]["settings"]["data_dir"]))
    slack = vloss_slack(references)
    runs = {key: rejudge(r, origin[key], slack) for key, r in runs.items()}
    seeds = sorted({seed for _, seed in runs})
    used = {(c, d) for (c, _), d in origin.items()}  # a folder's details count only where its runs are taken
    details = {label: [(d, det) for d, det in dets if (label, d) in used] for label, dets in details.items()}
    warnings = []
    recipe_cls = builtin_recipe_class()
    for (label, seed), r in runs.items():
        drift = recipe_drift(label, (r.get("metrics") or {}).get("recipe", {}), recipe_cls)  # none: original layout
        if drift:
            was = r.get("recorded_config", label)
            warnings.append(
                f"`{label}` seed {seed} ran with {', '.join(f'{k}={v[1]!r}' for k, v in drift.items())}, but that label "
                f"now means {', '.join(f'{k}={v[0]!r}' for k, v in drift.items())} (a default changed since, or a "
                f"--relabel is wrong; recorded as `{was}`): report it under a label that reproduces it (--relabel)"
            )
    for label in labels:
        shas = {json.dumps(det.get("sources_sha256"), sort_keys=True) for _, det in details.get(label, [])}
        if len(shas) > 1:
            where = ", ".join(str(d) for d, _ in details[label])
            warnings.append(f"`{label}`'s sources differ between {where} (see each run's sources_sha256)")
    order = [(c, seed) for seed in seeds for c in labels if (c, seed) in runs]
    report = {
        "schema": 1,
        "environment": environment(argv, Path(reports[0][1]["settings"]["data_dir"])),
        "previous_environments": [
            e for _, r in reports for e in (r["environment"], *r.get("previous_environments", []))
        ],
        "settings": {
            **reports[0][1]["settings"],
            "configs": labels,
            "config_details": [det for label in labels for _, det in details.get(label, [])[:1]],
            "seeds": seeds,
            "baseline": baseline,
        },
        "merged_from": [  # a folder that was itself a merge keeps its own sources and relabels under `earlier`
            {
                "dir": str(d),
                "runs": [f"{c} seed {sd}" for (c, sd), o in origin.items() if o == d],
                **({"earlier": {k: r.get(k) for k in ("merged_from", "relabeled")}} if r.get("merged_from") else {}),
            }
            for d, r in reports
        ],
        "merge_warnings": warnings,
        "relabeled": relabel,
        "rejudged": [f"{c} seed {sd}" for (c, sd), r in runs.items() if "rejudged_from" in r],
        "references": references,
        "order": [{"index": i, "config": c, "seed": seed} for i, (c, seed) in enumerate(order)],
        "runs": [runs[k] for k in order],
        "complete": True,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    if "trusted" in report["settings"]:
        report["settings"]["trusted"] = {**report["settings"]["trusted"], "vloss_slack": slack}
    report["summary"] = summarize(report["runs"], labels, baseline)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "benchmark.json", report)
    write_reports(report, a.out)
    for w in warnings:
        print(f"[benchmark] WARNING: {w}", flush=True)
    print(render_markdown(report).split("\n## Runs")[0], flush=True)
    print(f"[benchmark] merged {len(order)} runs from {len(reports)} folders -> {a.out}", flush=True)
    return 0
