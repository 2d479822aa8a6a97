"""scripts/benchmark.py: interleaved runs in fresh subprocesses, the summary, the baseline recipe, refusals, resume.

Training happens only in the module fixture (baseline vs canonical, 2 seeds, MAX_ITERS iterations on tiny random
data: ~10 s a run on a loaded 2-core machine) and once more in the resume test; the rest is in-process.
"""

import json
import os
import re
import shutil
import statistics
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import torch
from conftest import REPO, makefile_text

import levers
import train_mps
from model import GPT
from odegpt_eval import benchmark, signing, specs
from odegpt_eval.files import sha256
from odegpt_eval.layout import prepare_candidate
from odegpt_eval.report import run_curve
from odegpt_eval.runs import THREAD_VARS, execute_run, run_dir
from odegpt_eval.scoring import trusted_test_loss
from odegpt_eval.specs import BASELINE_RECIPE, BenchmarkError, Config, parse_config, recipe_drift
from odegpt_eval.summary import METRICS
from parity_tests import tolerances as T

MAX_ITERS = 3
SEEDS = (0, 1)
CONFIGS = ("baseline", "canonical")
# The same MAX_ITERS-step training of baseline or canonical in another process, maybe with another thread split: its
# losses differ by float32 rounding only (parity_tests/tolerances.py), the forward's on an evaluation of 8 x 64
# positions over GPT-2's full vocabulary at most (the baseline), and at most 32 sub-field evaluations (heun x2 at the
# most; these untrained models' logits lie within +-1). Three optimizer steps from one initialization add their own
# rounding, < 3 lr gamma~ per weight: far below it.
SHORT_RUN_BOUND = 2 * T.loss_bound(32, 4, 64, 32, 50304, 8 * 64, loss=11.0, scale=1.0)


def bench_argv(data, out, *extra):
    seeds = [str(s) for s in SEEDS]
    return ["--configs", *CONFIGS, "--seeds", *seeds, "--max-iters", str(MAX_ITERS), "--data-dir", str(data)] + [
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(smoke_benchmark):
    """(out dir, data dir) of one finished smoke benchmark (conftest: CONFIGS x SEEDS, MAX_ITERS, one thread)."""
    return smoke_benchmark


def load(out):
    return json.loads((out / "benchmark.json").read_text())


def test_every_report_carries_the_kneser_ney_reference_row(finished):
    """Fitted on the benchmark's own train.bin and scored as the models are (scripts/kneser_ney.py)."""
    import numpy as np

    from odegpt_eval import kneser_ney

    out, data = finished
    kn = load(out)["references"]["kneser_ney"]["whole_split_val"]
    assert list(kn) == ["2", "3", "4", "5"]
    train = np.fromfile(data / "train.bin", dtype=np.uint16)
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    assert kn["3"] == kneser_ney.whole_split_loss(kneser_ney.fit(train, 3), val)
    assert f"best **{min(kn.values()):.4f}**" in (out / "benchmark.md").read_text()


def test_end_to_end_outputs_order_and_summary(finished):
    out, _ = finished
    assert (out / "benchmark.md").is_file()
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = load(out)
    assert report["complete"] and report["settings"]["shortened"]
    for key in ("python", "torch", "numpy", "platform", "cpu_count", "git_commit", "command"):
        assert key in report["environment"]

    # interleaved per seed: A B A B, and executed in that order
    expected = [(c, s) for s in SEEDS for c in CONFIGS]
    assert [(o["config"], o["seed"]) for o in report["order"]] == expected
    runs = report["runs"]
    assert [(r["config"], r["seed"]) for r in runs] == expected
    assert [r["order_index"] for r in runs] == list(range(len(expected)))
    starts = [r["started_at"] for r in runs]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)

    by_key = {(r["config"], r["seed"]): r for r in runs}
    for r in runs:
        assert r["status"] == "ok", r.get("error")
        m = r["metrics"]
        assert m["seed"] == r["seed"] and m["iters"] == MAX_ITERS and m["history"]
        assert r["best_vloss"] == m["best_vloss"] and r["val_loss_full"] == m["val_loss_full"]
        assert r["fitness"] == pytest.approx(r["best_vloss"] + 0.01 * r["elapsed_min"])
        assert r["wall_s"] > 60 * r["elapsed_min"] > 0  # the subprocess also imports and reports
        # trained from the saved copy of the canonical files, as the harness imports a folder
        snapshot = out / "sources" / "canonical" / "train_mps.py"
        assert m["sources_sha256"]["train_mps.py"] == sha256(snapshot)
        assert "SHORT run" in (out / r["log"]).read_text()
    # the recipe reached the subprocess
    for s in SEEDS:
        assert by_key[("baseline", s)]["metrics"]["recipe"] == {**BASELINE_RECIPE, "seed": s}
        assert by_key[("canonical", s)]["metrics"]["recipe"] == asdict(train_mps.Recipe(seed=s))

    summary = report["summary"]["configs"]
    assert "paired_vs_baseline" not in summary["baseline"]
    for label in CONFIGS:
        for m in METRICS:
            values = [by_key[(label, s)][m] for s in SEEDS]
            assert summary[label][m]["values"] == values
            assert summary[label][m]["median"] == pytest.approx(statistics.median(values))
            assert summary[label][m]["mean"] == pytest.approx(statistics.fmean(values))
    paired = summary["canonical"]["paired_vs_baseline"]
    for m in METRICS:
        diffs = [by_key[("canonical", s)][m] - by_key[("baseline", s)][m] for s in SEEDS]
        assert paired[m]["seeds"] == list(SEEDS)
        assert paired[m]["diffs"] == pytest.approx(diffs)
        assert paired[m]["median"] == pytest.approx(statistics.median(diffs))

    md = (out / "benchmark.md").read_text()
    assert f"SHORTENED RUNS: TRAIN_MPS_MAX_ITERS={MAX_ITERS}" in md
    assert "| `canonical` |" in md and "Paired differences against `baseline`" in md


def test_the_sandboxed_scoring_gives_the_runners_in_process_figures(finished):
    """The baseline and the canonical, trained and scored in the sandbox (the prefix protocol, the cross-entropy in the
    runner), get the trusted test loss the runner computed in its own process before the sandbox: the in-process
    scoring (trusted_test_loss) of the checkpoint each run wrote, to float tolerance."""
    import numpy as np

    out, data = finished
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    for r in load(out)["runs"]:
        assert r["sandbox"]["name"] == "bubblewrap" and r["violations"] == []
        ckpt = torch.load(out / Path(r["log"]).parent / "out" / "ckpt.pt", map_location="cpu", weights_only=False)
        model = GPT(train_mps.GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        test, mine = val[r["heldout"]["test_start"] :], val[: r["heldout"]["test_start"]]
        assert r["trusted_test_loss"] == pytest.approx(trusted_test_loss(model, test), rel=1e-6, abs=1e-6)
        assert r["trusted_candidate_val_loss"] == pytest.approx(trusted_test_loss(model, mine), rel=1e-6)


def test_resume_keeps_only_records_the_runner_signed(finished, tmp_path, capsys):
    """A finished run's record planted in the folder (here: a run lost and a run.json written in its place), or a kept
    record edited after the runner wrote it, does not verify under the folder's key: --resume runs both again and
    says so."""
    src, data = finished
    out = tmp_path / "out"
    shutil.copytree(src, out)
    planted = run_dir(out, "canonical", 1) / "run.json"
    record = json.loads(planted.read_text())
    shutil.rmtree(planted.parent)
    planted.parent.mkdir(parents=True)
    planted.write_text(json.dumps({**record, "trusted_test_loss": 0.5, "signature": "0" * 64}))
    edited = run_dir(out, "baseline", 1) / "run.json"
    edited.write_text(json.dumps({**json.loads(edited.read_text()), "trusted_test_loss": 0.5}))
    assert benchmark.main(bench_argv(data, out, "--resume")) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("skipped, finished earlier") == 2 and "2 finished run(s) are run again" in stdout
    report = load(out)
    assert {r["trusted_test_loss"] for r in report["runs"]} & {0.5} == set()
    assert any("does not carry this runner's signature" in w for w in report["resume_warnings"])
    key = signing.key(out, create=False)
    assert all(
        signing.verified(load_json(out / r["log"].replace("train.log", "run.json")), key) for r in report["runs"]
    )


def load_json(path):
    return json.loads(Path(path).read_text())


def test_plot_only_redraws_from_the_json(finished):
    out, _ = finished
    before = (out / "benchmark.json").read_bytes()
    (out / "benchmark.md").unlink()
    (out / "benchmark.png").unlink()
    assert benchmark.main(["--plot-only", "--out", str(out)]) == 0
    assert (out / "benchmark.md").is_file() and (out / "benchmark.png").is_file()
    assert (out / "benchmark.json").read_bytes() == before


def test_a_run_without_metrics_json_is_drawn_from_what_its_log_prints(finished, tmp_path):
    """DreamTeam's layout writes no metrics.json: its curve is the evaluations its train.log prints, in DreamTeam's
    format (with or without a trailing learning rate) and nanoGPT's; other lines, and runs with neither, draw nothing."""
    log = tmp_path / "runs" / "a" / "seed0" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "number of parameters: 1.66M\n0: train 10.827  val 10.813\n100: train 9.495  val 9.452 (lr=6.0e-05)\n"
        "step 200: train loss 8.1950, val loss 8.2880\niter 250: loss 8.0000, time 12.00ms\n300: train 7.2  val nan\n"
    )
    run = {"log": "runs/a/seed0/train.log", "metrics": None}
    pts, source = run_curve(run, tmp_path)
    assert source == "printed" and pts[:3] == [(0, 10.813), (100, 9.452), (200, 8.288)]
    assert pts[3][0] == 300 and pts[3][1] != pts[3][1]  # a NaN evaluation is kept as NaN, not dropped or misread
    assert run_curve({**run, "log": "runs/missing.log"}, tmp_path) == ([], "")
    out, _ = finished  # a run with metrics.json keeps its own history
    r = next(r for r in load(out)["runs"] if r.get("status") == "ok")
    pts, source = run_curve(r, out)
    assert source == "metrics" and pts == [(h["iter"], h["val_loss"]) for h in r["metrics"]["history"]]


def test_resume_skips_finished_runs(finished, tmp_path, capsys):
    src, data = finished
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert benchmark.main(bench_argv(data, out)) == 2  # finished runs are never overwritten silently
    assert "--resume" in capsys.readouterr().err
    assert benchmark.main(bench_argv(data, out, "--resume", "--max-iters", "4")) == 2  # other settings
    assert "other settings" in capsys.readouterr().err

    lost = run_dir(out, "canonical", 1)
    shutil.rmtree(lost)  # as if the benchmark died during its last run
    kept = {k: run_dir(out, *k) / "run.json" for k in [("baseline", 0), ("canonical", 0), ("baseline", 1)]}
    mtimes = {k: p.stat().st_mtime_ns for k, p in kept.items()}
    assert benchmark.main(bench_argv(data, out, "--resume")) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("skipped, finished earlier") == 3
    assert {k: p.stat().st_mtime_ns for k, p in kept.items()} == mtimes
    assert (lost / "run.json").is_file()
    report = load(out)
    assert report["complete"] and len(report["runs"]) == 4
    assert [(r["config"], r["seed"]) for r in report["runs"]] == [(c, s) for s in SEEDS for c in CONFIGS]
    assert report["resume_warnings"] == []  # the kept runs trained with the files the benchmark trains with now


def test_resume_says_when_a_kept_run_trained_with_other_files(finished, tmp_path, capsys):
    """A kept run whose recorded sources differ from what its configuration trains with now (here its saved copy
    edited; elsewhere the copy lost and the origin re-made) is named in the log, benchmark.json and benchmark.md."""
    src, data = finished
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (snapshot,) = [d for d in (out / "sources").iterdir() if (d / "model.py").is_file()]  # both configs' copy
    (snapshot / "model.py").chmod(0o644)  # the runner leaves its saved copies read-only
    with (snapshot / "model.py").open("a") as f:
        f.write("\n# edited after the runs\n")
    assert benchmark.main(bench_argv(data, out, "--resume")) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("skipped, finished earlier") == 4
    warnings = load(out)["resume_warnings"]
    named = [re.match(r"`(\w+)` seed (\d+) was kept from an earlier run", w).groups() for w in warnings]
    assert sorted(named) == sorted((c, str(sd)) for c in CONFIGS for sd in SEEDS)
    assert all("model.py" in w and "train_mps.py" not in w for w in warnings)  # names the file that changed
    assert stdout.count("[benchmark] WARNING: `") == 4
    md = (out / "benchmark.md").read_text()
    assert "Kept by --resume from other sources" in md and md.count("was kept from an earlier run") == 4


def test_a_builtin_that_sets_a_lever_trains_with_levers_py_beside_the_two_files(tmp_path):
    """canonical:ngram_distill=... sets a field of levers.LeverRecipe: its snapshot holds levers.py too, and the child
    trains it through levers.train; the built-ins without a lever keep the two files' snapshot as before."""
    recipe = specs.builtin_recipe_class()
    assert recipe is levers.LeverRecipe
    plain = specs.parse_config("canonical:ema_decay=0.9", recipe)
    lever = specs.parse_config("canonical:ngram_distill=0.5,ema_decay=0.9", recipe)
    for c in (plain, specs.parse_config("canonical", recipe), specs.parse_config("baseline", recipe)):
        assert c.snapshot == specs.BUILTIN_SOURCE and specs.source_files(c) == specs.SOURCE_FILES
    assert lever.snapshot == specs.LEVERS_SOURCE
    assert specs.source_files(lever) == ("model.py", "train_mps.py", "levers.py")
    texts, _ = specs.source_texts(lever, tmp_path, resume=False)
    assert texts["levers.py"] == (REPO / "levers.py").read_bytes()


def test_baseline_recipe_is_the_seeds_starting_point():
    pinned = {f.name for f in fields(train_mps.Recipe)} - {"seed"}
    assert set(BASELINE_RECIPE) == pinned, "pin every Recipe field in BASELINE_RECIPE"
    assert parse_config("baseline", train_mps.Recipe).overrides == BASELINE_RECIPE
    r = train_mps.Recipe(**BASELINE_RECIPE)
    assert (r.solver, r.splitting, r.steps_per_layer) == ("euler", "lie", 1)
    assert (r.vocab_size, r.bias, r.dropout, r.zero_init_proj) == (50304, False, 0.0, False)
    assert r.kinetic_energy == 0.0 and r.jacobian_frobenius == 0.0
    assert (r.learning_rate, r.beta1, r.beta2, r.weight_decay) == (3e-4, 0.9, 0.95, 0.1)
    assert r.grad_clip == 1.0 and r.ema_decay == 0.0
    total = train_mps.max_iters
    for step in (0, 1, 2, 99, 199, 200, 201, 1000, total // 2, total - total // 5, total - 2, total - 1):
        assert train_mps.lr_at(step, total, r) == 1.0

    # the model and optimizer train() builds from it (same construction as train_mps.train)
    torch.manual_seed(0)
    config = train_mps.model_config(r)
    model = GPT(config)
    names = dict(model.named_parameters())
    assert not [n for n in names if n.endswith(".bias")]
    assert model.transformer.wte.weight is model.lm_head.weight  # tied
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    for n, p in names.items():  # nanoGPT's init, nothing zeroed
        if n.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(0.02 / (2 * train_mps.n_layer) ** 0.5, rel=0.1)
        elif p.dim() >= 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.1)
    (opt,) = train_mps.make_optimizers(model, r, "cpu")
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}
    for g in opt.param_groups:
        assert g["lr"] == 3e-4 and g["betas"] == (0.9, 0.95)
    x = torch.randint(0, 50257, (2, 16))
    model(x, x)
    assert float(model.regularization_loss()) == 0.0


def test_canonical_overrides_parse_by_field_type():
    c = parse_config("canonical:ema_decay=0.9", train_mps.Recipe)
    assert c.overrides == {"ema_decay": 0.9} and c.kind == "builtin"
    assert parse_config("canonical", train_mps.Recipe).overrides is None  # train() with no arguments
    c = parse_config("canonical:schedule=wsd,warmup_iters=10,bias=true,dropout=0", train_mps.Recipe)
    assert c.overrides == {"schedule": "wsd", "warmup_iters": 10, "bias": True, "dropout": 0.0}
    assert type(c.overrides["warmup_iters"]) is int and type(c.overrides["dropout"]) is float


@pytest.mark.parametrize(
    "spec, message",
    [
        ("canonical:ema_decy=0.9", r"unknown Recipe field 'ema_decy'.*valid fields: .*ema_decay"),
        ("canonical:warmup_iters=ten", r"'warmup_iters' is int"),
        ("canonical:bias=maybe", r"'bias' is bool"),
        ("canonical:seed=3", r"--seeds"),
        ("canonical:ema_decay", r"FIELD=VALUE"),
        ("no/such/folder", r"neither a built-in"),
    ],
)
def test_bad_configurations_are_clear_errors(spec, message):
    with pytest.raises(BenchmarkError, match=message):
        parse_config(spec, train_mps.Recipe)


def test_candidate_breaking_the_constraints_is_refused_before_anything_runs(synthetic_data, tmp_path, capsys):
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    shutil.copy(REPO / "model.py", candidate / "model.py")
    source = (REPO / "train_mps.py").read_text()
    assert "max_iters = 10001" in source
    (candidate / "train_mps.py").write_text(source.replace("max_iters = 10001", "max_iters = 500"))
    assert parse_config(str(candidate), train_mps.Recipe).kind == "folder"
    out = tmp_path / "out"
    argv = ["--configs", "canonical", str(candidate), "--data-dir", str(synthetic_data), "--out", str(out)]
    assert benchmark.main([*argv, "--max-iters", "3"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "max_iters" in err and str(candidate) in err
    assert not out.exists()


def test_merge_combines_runs_of_separate_benchmarks(finished, tmp_path, capsys):
    src, _ = finished
    full = load(src)
    parts = []
    for seed in SEEDS:  # as if each seed had been benchmarked in its own process
        part = tmp_path / f"seed{seed}"
        part.mkdir()
        report = {**full, "runs": [r for r in full["runs"] if r["seed"] == seed]}
        (part / "benchmark.json").write_text(json.dumps(report))
        parts.append(part)
    out = tmp_path / "merged"
    assert benchmark.main(["--merge", *map(str, parts), "--out", str(out)]) == 0
    merged = load(out)
    assert merged["summary"]["configs"] == full["summary"]["configs"]  # the same numbers as one benchmark
    assert [(r["config"], r["seed"]) for r in merged["runs"]] == [(c, s) for s in SEEDS for c in CONFIGS]
    assert (out / "benchmark.png").is_file() and "Merged from" in (out / "benchmark.md").read_text()

    only = tmp_path / "only"
    assert benchmark.main(["--merge", *map(str, parts), "--configs", "canonical", "--out", str(only)]) == 0
    assert load(only)["settings"]["configs"] == ["canonical"]
    screen = tmp_path / "screen"  # --seeds: a one-seed screen beside one seed of a longer benchmark
    assert benchmark.main(["--merge", str(src), "--seeds", "1", "--out", str(screen)]) == 0
    assert [(r["config"], r["seed"]) for r in load(screen)["runs"]] == [(c, 1) for c in CONFIGS]
    assert load(screen)["settings"]["seeds"] == [1]

    assert benchmark.main(["--merge", str(src), str(parts[0]), "--out", str(tmp_path / "dup")]) == 2
    assert "is in both" in capsys.readouterr().err
    picked = tmp_path / "picked"  # DIR@LABEL: only that configuration of that folder
    assert benchmark.main(["--merge", f"{src}@baseline", f"{parts[0]}@canonical", "--out", str(picked)]) == 0
    assert [(r["config"], r["seed"]) for r in load(picked)["runs"]] == [
        ("baseline", 0),
        ("canonical", 0),
        ("baseline", 1),
    ]
    other = tmp_path / "other"
    other.mkdir()
    changed = {**full, "settings": {**full["settings"], "max_iters": MAX_ITERS + 1}}
    (other / "benchmark.json").write_text(json.dumps(changed))
    assert benchmark.main(["--merge", str(parts[0]), str(other), "--out", str(tmp_path / "x")]) == 2
    assert "do not compare" in capsys.readouterr().err
    assert benchmark.main(["--merge", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    assert "benchmark.json" in capsys.readouterr().err


def test_jobs_run_at_once_in_order_with_the_same_losses(finished, tmp_path, monkeypatch):
    src, data = finished
    for k in THREAD_VARS:
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "jobs"
    assert benchmark.main(bench_argv(data, out, "--jobs", "2")) == 0
    report, alone = load(out), {(r["config"], r["seed"]): r for r in load(src)["runs"]}
    runs = report["runs"]
    assert report["complete"] and report["settings"]["jobs"] == 2
    assert [(r["config"], r["seed"]) for r in runs] == [(c, s) for s in SEEDS for c in CONFIGS]
    # two at a time: the first two ran together, and no more than two ever did (a run's [started_at, finished_at]
    # lies inside its slot; "each later run started before an earlier one finished" failed under load, when the two
    # earlier runs both ended while the next one was being prepared)
    spans = [(r["started_at"], r["finished_at"]) for r in runs]
    assert spans[1][0] < spans[0][1]
    assert all(sum(s <= start < f for s, f in spans) <= 2 for start, _ in spans)
    want = str(max(1, (os.cpu_count() or 1) // 2))
    for r in runs:
        assert r["thread_env"] == {k: want for k in THREAD_VARS}
        for m in ("best_vloss", "val_loss_full"):  # the same training as one at a time, up to thread-count rounding
            assert r[m] == pytest.approx(alone[(r["config"], r["seed"])][m], abs=SHORT_RUN_BOUND)
    assert "2 at a time" in (out / "benchmark.md").read_text()
    assert benchmark.main(bench_argv(data, tmp_path / "bad", "--jobs", "0")) == 2


def test_a_benchmark_stopped_by_an_error_leaves_the_next_one_unharmed(finished, tmp_path, monkeypatch):
    """A run that raises stops its benchmark (every process group killed); a run started afterwards in the same
    process runs normally (the stop flag belongs to the benchmark that raised, not to the module: CI once recorded
    every later run of the suite as interrupted)."""
    _, data = finished
    real = prepare_candidate

    def broken(*args):
        raise SystemError("simulated failure while preparing a run")

    monkeypatch.setattr("odegpt_eval.runs.prepare_candidate", broken)
    with pytest.raises(SystemError):
        benchmark.main(bench_argv(data, tmp_path / "broken", "--jobs", "2"))
    monkeypatch.setattr("odegpt_eval.runs.prepare_candidate", real)
    out = tmp_path / "after"
    snapshot = out / "sources" / "folder-today"
    snapshot.mkdir(parents=True)
    for name in ("train_mps.py", "model.py"):
        shutil.copy(REPO / name, snapshot / name)
    config = Config("today", "folder", str(snapshot), snapshot.name, None)
    record = execute_run(config, 0, 0, out, data, 1)
    assert record["status"] == "ok", (record["status"], record.get("error"))


EULER = "canonical:solver=euler,splitting=lie,steps_per_layer=1,random_steps=0"  # the canonical before FLOW
TABLES_REFERENCE = f"{EULER},ema_decay=0.0,schedule=cosine"  # where the switches were chosen


@pytest.mark.parametrize(
    "variable, head, reference",
    [
        ("ABLATIONS", [EULER, "baseline"], TABLES_REFERENCE),
        ("LR_SWEEP", [], TABLES_REFERENCE),
        ("CANDIDATES", [EULER], EULER),
        ("LEVERS", [EULER], EULER),
    ],
)
def test_make_targets_name_valid_configurations(variable, head, reference):
    """`make ablations`, `make lr-sweep` and `make candidates` (the README's tables in one command each) list
    configurations the benchmark accepts, each a real change of the recipe, and each list on its reference: the
    tables were measured on the canonical of their time (EULER), which the targets name explicitly."""
    text = makefile_text()
    assert f"REFERENCE := {TABLES_REFERENCE}\n" in text and f"EULER := {EULER}\n" in text
    assert parse_config(EULER, train_mps.Recipe).overrides  # not today's canonical
    specs = next(line for line in text.splitlines() if line.startswith(f"{variable} :=")).split(":=", 1)[1].split()
    assert specs[: len(head)] == head and len(set(specs)) == len(specs)
    rules = (" ".join(line.split()) for line in text.splitlines())  # whitespace runs as one space
    rule = next(line for line in rules if f"--configs {' '.join(specs)} " in line)
    assert reference in specs and f"--baseline {reference} " in rule
    recipes = {}
    for spec in (s for s in [*specs, reference] if s != "baseline"):
        recipe = levers.LeverRecipe  # the tables set levers.py's fields too (Muon, the teacher, ...)
        recipes[spec] = replace(recipe(), **parse_config(spec, recipe).overrides)
    assert recipes[reference] != levers.LeverRecipe()  # the tables' reference is not today's canonical
    for spec in (s for s in specs[len(head) :] if s not in ("baseline", reference)):
        assert recipes[spec] != recipes[reference]  # a real change of the recipe the table was measured on


@pytest.mark.parametrize(
    "report",
    [
        "ablations",
        "candidates",
        "lr_sweep",
        "canonical_vs_baseline",
        "tinyshakespeare-trusted",
        "issue32_decision",
    ],
)
def test_readme_reports_label_each_run_by_the_recipe_it_ran(report):
    """The README's tables (results/benchmark/<report>) name each run by a configuration that, with today's
    Recipe defaults, reproduces the recipe it recorded: a default changed without relabelling fails here."""
    runs = json.loads((REPO / "results" / "benchmark" / report / "benchmark.json").read_text())["runs"]
    assert runs
    drift = {
        (r["config"], r["seed"]): d
        for r in runs
        if (d := recipe_drift(r["config"], r["metrics"]["recipe"], levers.LeverRecipe))
    }
    assert drift == {}
    # and the check can fail: under the previous default the adopted canonical is another recipe
    canonical = next(r for r in runs if r["config"].startswith("canonical"))
    assert recipe_drift(canonical["config"], {**canonical["metrics"]["recipe"], "schedule": "x"}, levers.LeverRecipe)


def test_merge_relabels_runs_made_under_an_older_default(finished, tmp_path, capsys):
    src, _ = finished
    by_key = {(r["config"], r["seed"]): r for r in load(src)["runs"]}
    out = tmp_path / "swapped"
    swap = ["--relabel", "baseline", "canonical", "--relabel", "canonical", "baseline"]
    assert benchmark.main(["--merge", str(src), *swap, "--configs", "canonical", "baseline", "--out", str(out)]) == 0
    merged = load(out)
    assert merged["settings"]["configs"] == ["canonical", "baseline"] and merged["settings"]["baseline"] == "canonical"
    for r in merged["runs"]:  # the same runs, reported under the other name, their recorded label kept
        other = {"canonical": "baseline", "baseline": "canonical"}[r["config"]]
        assert r["recorded_config"] == other and r["best_vloss"] == by_key[(other, r["seed"])]["best_vloss"]
    paired = merged["summary"]["configs"]["baseline"]["paired_vs_baseline"]["val_loss_full"]["diffs"]
    want = [by_key[("canonical", s)]["val_loss_full"] - by_key[("baseline", s)]["val_loss_full"] for s in SEEDS]
    assert paired == pytest.approx(want)
    assert "reported as `canonical`" in (out / "benchmark.md").read_text()
    # the swapped labels no longer mean the recipes their runs recorded: every run is flagged
    assert sum("now means" in w for w in merged["merge_warnings"]) == 2 * len(SEEDS)
    assert "now means" in capsys.readouterr().out
    again = tmp_path / "again"  # relabelling a merged report keeps the label each run was recorded under
    assert benchmark.main(["--merge", str(out), "--relabel", "canonical", "c2", "--out", str(again)]) == 0
    relabelled = {(r["config"], r["seed"]): r["recorded_config"] for r in load(again)["runs"]}
    assert relabelled == {**{("c2", s): "baseline" for s in SEEDS}, **{("baseline", s): "canonical" for s in SEEDS}}
    details = {d["label"]: d.get("recorded_label") for d in load(again)["settings"]["config_details"]}
    assert details == {"c2": "baseline", "baseline": "canonical"}
    # and it keeps where the merged report's runs came from, and its relabels, under `earlier`
    (entry,) = load(again)["merged_from"]
    assert entry["earlier"] == {"merged_from": merged["merged_from"], "relabeled": merged["relabeled"]}
    assert len(load(again)["previous_environments"]) == 1 + len(merged["previous_environments"])
    assert f"itself merged from `{src}`" in (again / "benchmark.md").read_text()
    assert (
        benchmark.main(
            [
                "--merge",
                str(src),
                "--relabel",
                "baseline",
                "x",
                "--relabel",
                "baseline",
                "y",
                "--out",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "twice" in capsys.readouterr().err
    assert benchmark.main(bench_argv(src.parent / "data", tmp_path / "r", "--relabel", "a", "b")) == 2
    assert "--merge" in capsys.readouterr().err


def test_the_fixed_block_probe_scores_a_run_as_the_runner_does(finished, tmp_path):
    """scripts/fixed_block_probe.py with the fixed block's values (max_iters shortened as the benchmark's was)
    reproduces the benchmark's trusted figures for the same seed: same data halves, same training, same scoring."""
    sys.path.insert(0, str(REPO / "scripts"))  # a script beside the command lines, not a package module
    import fixed_block_probe

    out, data = finished
    probe_out = tmp_path / "probe.json"
    argv = ["--data-dir", str(data), "--set", f"max_iters={MAX_ITERS}", "--seed", "0", "--out", str(probe_out)]
    assert fixed_block_probe.main(argv) == 0
    probe = json.loads(probe_out.read_text())
    run = next(r for r in load(out)["runs"] if r["config"] == "canonical" and r["seed"] == 0)
    assert probe["trusted_test_loss"] == pytest.approx(run["trusted_test_loss"], abs=SHORT_RUN_BOUND)
    assert probe["candidate_val_loss"] == pytest.approx(run["trusted_candidate_val_loss"], abs=SHORT_RUN_BOUND)
    assert probe["best_vloss"] == pytest.approx(run["best_vloss"], abs=SHORT_RUN_BOUND)
    # --ckpt scores the benchmark run's own checkpoint the same way: the control for probes of its recipe and seed
    (ckpt,) = (out / "runs").glob("canonical*/seed0/out/ckpt.pt")  # the candidate's folder of the run
    control_out = tmp_path / "control.json"
    assert fixed_block_probe.main(["--data-dir", str(data), "--ckpt", str(ckpt), "--out", str(control_out)]) == 0
    control = json.loads(control_out.read_text())
    for key in ("trusted_test_loss", "candidate_val_loss", "train_slice_loss"):
        assert control[key] == pytest.approx(probe[key], abs=SHORT_RUN_BOUND), key
    assert control["train_slice_tokens"] == probe["train_slice_tokens"] == probe["heldout"]["test_tokens"]
    assert not (tmp_path / "control.work").exists()
    # the control reads the same cut without writing a data folder: the probe's record less the folder it trained on
    assert control["heldout"] == {k: v for k, v in probe["heldout"].items() if k != "candidate_data_dir"}
