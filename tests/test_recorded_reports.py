"""The committed reports under results/ stay readable by today's tooling: each re-renders its benchmark.md byte for byte
from its benchmark.json, and merges again (re-judged by today's rules) into the same summary: the trusted runner's
new rules and the tooling's layout change nothing of what was recorded.

Reports made before the renderer took its present layout (no Kneser-Ney reference row in their JSON) were never
re-rendered and are left out of the first check; every report is merged.
"""

import json
from pathlib import Path

import pytest
from conftest import REPO

from odegpt_eval import benchmark
from odegpt_eval.report import render_markdown

REPORTS = sorted(p.parent for p in (REPO / "results").rglob("benchmark.json") if (p.parent / "benchmark.md").is_file())
RENDERED = [d for d in REPORTS if "references" in json.loads((d / "benchmark.json").read_text())]


def name(d: Path) -> str:
    return str(d.relative_to(REPO))


def test_the_committed_reports_are_found():
    assert len(REPORTS) >= 60 and len(RENDERED) >= 40


@pytest.mark.parametrize("folder", RENDERED, ids=name)
def test_a_committed_report_re_renders_byte_for_byte(folder):
    report = json.loads((folder / "benchmark.json").read_text())
    assert render_markdown(report) == (folder / "benchmark.md").read_text()


@pytest.mark.parametrize("folder", REPORTS, ids=name)
def test_a_committed_report_merges_into_the_same_summary(folder, tmp_path, monkeypatch):
    """The merge re-judges each run (where its findings are kept) with the slack the report's reference row gives:
    the recorded row stands in for the Kneser-Ney fit (whose data folder is not on every machine), and the figure,
    which costs a second a report, is not drawn."""
    report = json.loads((folder / "benchmark.json").read_text())
    monkeypatch.setattr("odegpt_eval.merge.reference_losses", lambda data_dir: report.get("references"))
    monkeypatch.setattr("odegpt_eval.report.render_png", lambda report, out: None)
    monkeypatch.chdir(REPO)  # merged reports name their sources relative to the repository
    finished = {r["config"] for r in report["runs"] if r.get("status") == "ok"}
    labels = [c for c in report["settings"]["configs"] if c in finished]
    argv = ["--merge", name(folder), "--configs", *labels, "--baseline", report["summary"]["baseline"]]
    assert benchmark.main([*argv, "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "benchmark.json").read_text())
    assert set(merged["settings"]["configs"]) <= set(report["settings"]["configs"])
    for label, entry in report["summary"]["configs"].items():  # reports older than a metric lack its entry
        if label in merged["summary"]["configs"]:
            assert shared(merged["summary"]["configs"][label], entry) == shared(entry, entry), label
    # the same runs excluded (the wording of a violation may have changed since it was recorded)
    assert excluded(merged) == excluded(report)


def excluded(report: dict) -> list:
    return [(e["config"], e["seed"]) for e in report["summary"].get("excluded", [])]


def shared(entry: dict, keys_of: dict) -> dict:
    """`entry` restricted to the keys `keys_of` has, also inside its paired differences."""
    out = {k: v for k, v in entry.items() if k in keys_of}
    if "paired_vs_baseline" in out:
        out["paired_vs_baseline"] = {
            m: v for m, v in out["paired_vs_baseline"].items() if m in keys_of["paired_vs_baseline"]
        }
    return out
