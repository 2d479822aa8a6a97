"""The DreamTeam original layout under the trusted runner (scripts/benchmark.py) and the re-ranking of a recorded
generation (scripts/rerank.py).

The original (tests/dreamteam_harness.py: ORIGINAL_LAYOUT, ORIGINAL_LAYOUT_DATA_DIR) keeps the fixed values as
locals of train(), reads its data from a literal path, uses device 'mps' and sets no seed. The runner adapts those
lines only, says what it adapted, and then judges the run like any other. Runs are MAX_ITERS iterations on tiny
random data with today's model.py (its nanoGPT API is what the original calls).
"""

import json
import math

import pytest
import torch
from conftest import REPO, write_bins
from dreamteam_harness import ORIGINAL_LAYOUT, ORIGINAL_LAYOUT_DATA_DIR

from odegpt_eval import rerank
from odegpt_eval.children.train_child import returned_value
from odegpt_eval.judge import VLOSS_MARGIN, VLOSS_SLACK, judge_run, vloss_slack
from odegpt_eval.layout import adapt_original_layout, prepare_candidate, runner_device, train_layout
from odegpt_eval.merge import rejudge
from odegpt_eval.runs import execute_run
from odegpt_eval.scoring import batch_floor, evaluations
from odegpt_eval.specs import Config

MAX_ITERS = 3
MODEL = (REPO / "model.py").read_text()


def changed_lines(a: str, b: str) -> list[int]:
    la, lb = a.splitlines(), b.splitlines()
    assert len(la) == len(lb)
    return [i + 1 for i, (x, y) in enumerate(zip(la, lb)) if x != y]


def line_of(text: str, start: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(start))


# --- the adaptation, statically ---------------------------------------------------------------------------------


def test_adaptation_rewrites_exactly_the_three_values(tmp_path):
    text, notes = adapt_original_layout(ORIGINAL_LAYOUT_DATA_DIR, tmp_path / "data", "cpu", 7)
    compile(text, "train_mps.py", "exec")
    expected = [line_of(ORIGINAL_LAYOUT_DATA_DIR, f"    {n} = ") for n in ("max_iters", "data_dir", "device")]
    assert changed_lines(ORIGINAL_LAYOUT_DATA_DIR, text) == sorted(expected)
    assert f"    data_dir = {str(tmp_path / 'data')!r}" in text.splitlines()
    assert "    device = 'cpu'" in text.splitlines() and "    max_iters = 7" in text.splitlines()
    assert len(notes) == 3 and all(n.startswith("train_mps.py line ") for n in notes)
    assert train_layout(text) == "train"  # still the original layout


def test_full_runs_on_mps_change_nothing_but_the_data_folder(tmp_path):
    text, notes = adapt_original_layout(ORIGINAL_LAYOUT_DATA_DIR, tmp_path, "mps", None)
    assert changed_lines(ORIGINAL_LAYOUT_DATA_DIR, text) == [line_of(ORIGINAL_LAYOUT_DATA_DIR, "    data_dir = ")]
    text, notes = adapt_original_layout(ORIGINAL_LAYOUT, tmp_path, "mps", None)
    assert text == ORIGINAL_LAYOUT and notes == []  # the relative path needs no change: the working directory


def test_non_ascii_around_a_value_is_cut_by_bytes(tmp_path):
    source = ORIGINAL_LAYOUT_DATA_DIR.replace(
        "    data_dir = '/Users/someone/DreamTeam/data'\n", "    data_dir = '/Users/jürgen/Daten'  # über\n"
    )
    text, _ = adapt_original_layout("# ünïcode\n" + source, tmp_path, "cpu", 5)
    compile(text, "train_mps.py", "exec")
    assert f"    data_dir = {str(tmp_path)!r}  # über" in text.splitlines()


def test_odegpt_layout_runs_from_its_snapshot_unadapted(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "train_mps.py").write_text((REPO / "train_mps.py").read_text())
    (snap / "model.py").write_text(MODEL)
    data = write_bins(tmp_path / "src")
    (tmp_path / "run").mkdir()
    folder, heldout, layout, notes = prepare_candidate(snap, tmp_path / "run", data, MAX_ITERS)
    assert (folder, layout, notes) == (snap, "module", [])
    assert heldout["candidate_data_dir"] == str(tmp_path / "run" / "data")


def returned(best_type: str, value: float = 5.0) -> dict:
    return {
        "returned": [{"type": best_type, "value": value}, {"type": "builtins.float", "value": 1.0}],
        "trusted": {"test_loss": 5.2, "elapsed_min": 1.0, "train_min": 1.0},
        "monitor": {
            "model_found": True,
            "optimizer_steps": 3,
            "training_forwards": 3,
            "training_batch_shapes": {"8x64": 3},
            "modules_trained": 1,
        },
    }


@pytest.mark.parametrize(("layout", "ok"), [("train", True), ("module", False)])
def test_a_tensor_best_vloss_is_accepted_in_the_original_layout_only(layout, ok):
    record = {"violations": []}
    judge_run(record, returned("torch.Tensor"), 3, layout)
    assert (record["violations"] == []) is ok, record["violations"]
    assert (record["best_vloss"] == 5.0) is ok


def test_returned_value_reads_a_0d_tensor_only():
    assert returned_value(torch.tensor(4.5))["value"] == 4.5
    assert returned_value(torch.tensor([4.5, 1.0]))["value"] is None
    assert returned_value(torch.tensor(4))["value"] is None  # an integer tensor is no loss


# --- runs under the trusted runner ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_bins(tmp_path_factory.mktemp("data"))


def run(root, name, train_mps, data, seed=0):
    out = root / "out"
    snapshot = out / "sources" / f"folder-{name}"
    snapshot.mkdir(parents=True)
    (snapshot / "train_mps.py").write_text(train_mps)
    (snapshot / "model.py").write_text(MODEL)
    config = Config(name, "folder", str(snapshot), snapshot.name, None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("odegpt_eval.judge.ELAPSED_SLACK_MIN", 0.0)
        return execute_run(config, seed, 0, out, data, MAX_ITERS)


@pytest.mark.parametrize("source", [ORIGINAL_LAYOUT, ORIGINAL_LAYOUT_DATA_DIR], ids=["relative-path", "data_dir"])
def test_the_original_layout_runs_clean_and_says_what_was_adapted(tmp_path, data, source):
    r = run(tmp_path, "orig", source, data)
    assert r["status"] == "ok" and r["violations"] == [], (r["violations"], r.get("error"))
    assert r["layout"] == "train"
    assert r["optimizer_steps"] == MAX_ITERS and r["training_batch_shapes"] == {"8x64": MAX_ITERS}
    assert math.isfinite(r["trusted_test_loss"]) and math.isfinite(r["best_vloss"])
    notes = " | ".join(r["adaptations"])
    assert f"max_iters 10001 -> {MAX_ITERS}" in notes and "seeded by the runner" in notes
    assert ("data_dir '/Users/someone/DreamTeam/data'" in notes) is (source is ORIGINAL_LAYOUT_DATA_DIR)
    if not torch.backends.mps.is_available():
        assert f"device 'mps' -> {runner_device()!r}" in notes
    assert (tmp_path / "out" / "sources" / "folder-orig" / "train_mps.py").read_text() == source  # snapshot intact


def test_the_runner_seed_makes_an_unseeded_candidate_reproducible(tmp_path, data):
    a = run(tmp_path / "a", "orig", ORIGINAL_LAYOUT, data, seed=1)
    b = run(tmp_path / "b", "orig", ORIGINAL_LAYOUT, data, seed=1)
    c = run(tmp_path / "c", "orig", ORIGINAL_LAYOUT, data, seed=2)
    assert a["trusted_test_loss"] == b["trusted_test_loss"] and a["best_vloss"] == b["best_vloss"]
    assert a["trusted_test_loss"] != c["trusted_test_loss"]


def test_an_original_layout_cheat_is_still_a_violation(tmp_path, data):
    cheat = ORIGINAL_LAYOUT.replace(
        "            if vloss < best_vloss:\n",
        "            if vloss < best_vloss:\n                vloss = vloss - 3.0\n",
    )
    assert cheat != ORIGINAL_LAYOUT
    r = run(tmp_path, "cheat", cheat, data)
    assert any("the lowest loss the runner finds for one evaluation batch" in v for v in r["violations"]), r[
        "violations"
    ]


# --- scripts/rerank.py -------------------------------------------------------------------------------

RESULTS = """\
weaker_decay: vloss=4.3758, time=7.13 min
unchanged: vloss=4.5937, time=7.13 min
baseline: vloss=4.6439, time=6.89 min
broken: vloss=inf, time=inf min
"""


def generation(root):
    """A DreamTeam checkout in miniature: src/dreamteam/ with the starting files, gen_1 with results.txt, a
    candidate that changed train_mps.py only (weight decay), one that changed nothing but its data path, and one
    that failed."""
    src = root / "src" / "dreamteam"
    gen = src / "dreamteam_generations" / "gen_1"
    for name in ("weaker_decay", "unchanged", "broken"):
        (gen / name).mkdir(parents=True)
    (src / "train_mps.py").write_text(ORIGINAL_LAYOUT)
    (src / "model.py").write_text(MODEL)
    (gen / "weaker_decay" / "train_mps.py").write_text(
        ORIGINAL_LAYOUT_DATA_DIR.replace("weight_decay=0.1,", "weight_decay=0.01,")
    )
    (gen / "unchanged" / "train_mps.py").write_text(ORIGINAL_LAYOUT_DATA_DIR)
    (gen / "results.txt").write_text(RESULTS)
    return gen


def test_results_parse_in_the_recorded_order(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("b: vloss=5.0, time=1 min\na: vloss=4.0, time=2.5 min\nc: vloss=inf, time=inf min\n")
    rows = rerank.parse_results(path)
    assert [(r["name"], r["rank"]) for r in rows] == [("a", 1), ("b", 2), ("c", None)]
    path.write_text("a: loss 4.0\n")
    with pytest.raises(rerank.RerankError, match="results.txt:1: expected"):
        rerank.parse_results(path)


def test_a_generation_without_starting_files_names_the_fix(tmp_path):
    gen = generation(tmp_path)
    (tmp_path / "src" / "dreamteam" / "model.py").unlink()
    with pytest.raises(rerank.RerankError, match="--base"):
        rerank.base_folder(gen, None)
    assert rerank.main(["--generation", str(gen), "--out", str(tmp_path / "o")]) == 2


def test_top_skips_the_baseline_and_failed_candidates(tmp_path):
    rows = rerank.parse_results(generation(tmp_path) / "results.txt")
    assert rerank.pick(rows, None, 5) == ["baseline", "weaker_decay", "unchanged"]
    with pytest.raises(rerank.RerankError, match="not in results.txt"):
        rerank.pick(rows, ["nobody"], 3)


def synthetic_report(medians: dict[str, float], seeds=(0, 1, 2)) -> dict:
    """benchmark.json as rerank() reads it: per configuration the seeds, each seed's two figures and their medians."""
    return {
        "settings": {"seeds": list(seeds)},
        "summary": {
            "configs": {
                c: {
                    "seeds": list(seeds),
                    "trusted_test_loss": {"values": [m] * len(seeds), "median": m},
                    "best_vloss": {"values": [m - 0.5] * len(seeds), "median": m - 0.5},
                }
                for c, m in medians.items()
            }
        },
    }


def test_rerank_ties_share_a_rank_and_do_not_uphold_the_recorded_order():
    rows = [
        {"name": "a", "vloss": 4.3, "rank": 1},
        {"name": "b", "vloss": 4.5, "rank": 2},
        {"name": "baseline", "vloss": 4.6, "rank": 3},
    ]
    labels = {n: n for n in ("baseline", "a", "b")}
    names = ["baseline", "a", "b"]
    tied = rerank.rerank(rows, names, labels, synthetic_report({"baseline": 5.3, "a": 5.2, "b": 5.3}))
    assert {r["name"]: r["trusted_rank"] for r in tied["rows"]} == {"a": 1, "baseline": 2, "b": 2}
    assert tied["order_survives"] is False and tied["trusted_ties"] in (
        [["baseline", "b"]],
        [["b", "baseline"]],
    )
    assert rerank.order_text(["a", "b", "baseline"], [["b", "baseline"]]) == "a > b = baseline"
    assert {r["name"]: r["same_as_baseline"] for r in tied["rows"]} == {"baseline": None, "a": False, "b": True}
    kept = rerank.rerank(rows, names, labels, synthetic_report({"baseline": 5.3, "a": 5.1, "b": 5.2}))
    assert kept["order_survives"] is True and kept["trusted_ties"] == []
    short = synthetic_report({"baseline": 5.3, "a": 5.1, "b": 5.2})
    short["settings"]["seeds"] = [0, 1, 2, 3]  # a seed still to run: no verdict yet
    assert rerank.rerank(rows, names, labels, short)["order_survives"] is None


def test_an_unfinished_rerank_ranks_on_the_seeds_every_candidate_has():
    """b finished only seed 0, its worse one for the others: medians over different seeds would put b first."""
    rows = [{"name": "a", "vloss": 4.3, "rank": 1}, {"name": "b", "vloss": 4.5, "rank": 2}]
    report = synthetic_report({"baseline": 5.3, "a": 5.2, "b": 5.25})
    per_seed = {"baseline": [5.4, 5.2, 5.3], "a": [5.3, 5.1, 5.2], "b": [5.25]}
    for c, values in per_seed.items():
        entry = report["summary"]["configs"][c]
        entry.update(seeds=list(range(len(values))), trusted_test_loss={"values": values, "median": values[-1]})
        entry["best_vloss"]["values"] = [v - 0.5 for v in values]
    names = ["baseline", "a", "b"]
    result = rerank.rerank(rows, names, {n: n for n in names}, report)
    assert result["ranked_on_seeds"] == [0] and not result["complete"] and result["order_survives"] is None
    assert result["trusted_order"] == ["b", "a", "baseline"]  # on seed 0: 5.25 < 5.3 < 5.4
    assert {r["name"]: r["rank_figure"] for r in result["rows"]} == {"baseline": 5.4, "a": 5.3, "b": 5.25}
    assert rerank.ranked_on(result) == " (on seed 0: those every candidate has finished)"
    assert rerank.ranked_on({"complete": True}) == ""
    assert {r["name"]: r["same_as_baseline"] for r in result["rows"]}["b"] is False  # judged on b's seed 0
    same = report["summary"]["configs"]["b"]
    same.update(trusted_test_loss={"values": [5.4], "median": 5.4}, best_vloss={"values": [4.9], "median": 4.9})
    rows_now = rerank.rerank(rows, names, {n: n for n in names}, report)["rows"]
    assert {r["name"]: r["same_as_baseline"] for r in rows_now}["b"] is True  # equal to the baseline's seed 0


def test_rerank_end_to_end(tmp_path, data):
    gen = generation(tmp_path)
    out = tmp_path / "rr"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("odegpt_eval.judge.ELAPSED_SLACK_MIN", 0.0)
        status = rerank.main(
            [
                "--generation",
                str(gen),
                "--top",
                "2",
                "--data-dir",
                str(data),
                "--seeds",
                "0",
                "1",
                "--max-iters",
                str(MAX_ITERS),
                "--out",
                str(out),
            ]
        )
    assert status == 0
    result = json.loads((out / "rerank.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["baseline", "weaker_decay", "unchanged"]
    assert result["complete"] and result["order_survives"] in (True, False)
    rank = {r["name"]: r["trusted_rank"] for r in result["rows"]}  # the unchanged candidate ties the baseline
    assert rank["unchanged"] == rank["baseline"] and sorted(rank.values()) in ([1, 1, 3], [1, 2, 2])
    for r in result["rows"]:
        assert len(r["trusted_test_loss"]) == 2 and all(math.isfinite(v) for v in r["trusted_test_loss"])
    assert result["files"]["unchanged"] == {"model.py": "starting file", "train_mps.py": "own"}
    assert result["files"]["baseline"] == {"model.py": "starting file", "train_mps.py": "starting file"}
    # the candidate that changed only its data path trains as the baseline does, bit for bit (seeded runs)
    same = {r["name"]: r["same_as_baseline"] for r in result["rows"]}
    assert same == {"baseline": None, "weaker_decay": False, "unchanged": True}
    md = (out / "rerank.md").read_text()
    assert "SHORTENED RUNS" in md and "Order survives:" in md
    assert "unchanged trains exactly as the baseline" in md and "weaker_decay trains exactly" not in md
    assert "The baseline's own best_vloss over the seeds" in md
    assert "Adapted to run here" in (out / "benchmark" / "benchmark.md").read_text()
    # --render-only runs nothing and writes the same result from the report; without a report it says what to run
    (out / "rerank.md").unlink()
    assert rerank.main(["--generation", str(gen), "--top", "2", "--out", str(out), "--render-only"]) == 0
    assert (out / "rerank.md").read_text() == md
    assert json.loads((out / "rerank.json").read_text()) == result
    assert "kept by `--resume` trained with other copies" not in md
    # runs a --resume kept from other copies of the files (a lost starting file re-made) are flagged in rerank.md
    bench_json = out / "benchmark" / "benchmark.json"
    kept = json.loads(bench_json.read_text())
    bench_json.write_text(json.dumps({**kept, "resume_warnings": ["`baseline` seed 1 was kept from an earlier run"]}))
    assert rerank.main(["--generation", str(gen), "--top", "2", "--out", str(out), "--render-only"]) == 0
    assert "**1 run(s) kept by `--resume` trained with other copies" in (out / "rerank.md").read_text()
    bench_json.write_text(json.dumps(kept))
    empty = ["--generation", str(gen), "--top", "2", "--out", str(tmp_path / "none"), "--render-only"]
    assert rerank.main(empty) == 2
    # a second call on the same folder with --resume keeps the runs; another generation there is refused
    (gen / "weaker_decay" / "train_mps.py").write_text(ORIGINAL_LAYOUT_DATA_DIR)
    assert rerank.main(["--generation", str(gen), "--top", "2", "--out", str(out), "--resume"]) == 2


# --- the returned-figure check across the two halves of val, and re-judging at a merge ------------------------


def kn_refs(test: float, mine: float) -> dict:
    return {
        "kneser_ney": {"heldout_test": {"3": test, "4": test + 0.01}, "candidate_val": {"3": mine + 0.02, "4": mine}}
    }


def test_vloss_slack_widens_by_how_much_harder_the_test_half_is():
    assert vloss_slack(kn_refs(5.05, 4.45)) == pytest.approx(VLOSS_SLACK + 0.6)
    assert vloss_slack(kn_refs(4.40, 4.45)) == VLOSS_SLACK  # an easier test half: no less
    assert vloss_slack(None) == VLOSS_SLACK


def test_the_slack_decides_the_violation():
    payload = returned("builtins.float", value=5.2 - 1.3)  # 1.3 nats below the trusted test loss of 5.2
    strict, wide = {"violations": []}, {"violations": []}
    judge_run(strict, payload, 3, "module", VLOSS_SLACK)
    judge_run(wide, payload, 3, "module", vloss_slack(kn_refs(5.05, 4.45)))
    assert any("nats below the trusted test loss" in v for v in strict["violations"]) and wide["violations"] == []


def easy_passage_losses(n: int = 18_048, seed: int = 0):
    """Per-token losses of a text like tinyshakespeare's first half of val: ~4.5 nats with a spread, and a stretch
    of 300 tokens the model nearly knows (a passage repeated from train)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    losses = rng.gamma(2.0, 2.25, size=n)  # mean 4.5, std 3.2 per token
    losses[7_000:7_300] = rng.gamma(2.0, 0.75, size=300)  # mean 1.5
    return losses


def harness_minimum(losses, seed: int, n_evals: int = 101) -> float:
    """best_vloss as train_mps.train() makes it: the min over n_evals evaluation batches, each drawn by
    train_mps.get_batch from its own generator (the starts read off a batch of torch.arange)."""
    import numpy as np

    import train_mps

    starts_of = torch.arange(len(losses) - 1)
    g = torch.Generator().manual_seed(seed)
    csum = np.concatenate([[0.0], np.cumsum(losses)])
    best = math.inf
    for _ in range(n_evals):
        at = train_mps.get_batch(starts_of, g)[0][:, 0].numpy()  # (8,) window starts
        best = min(best, float(np.mean((csum[at + 64] - csum[at]) / 64)))
    return best


def test_the_batch_floor_bounds_an_honest_minimum_and_the_old_slack_did_not():
    """Across 200 seeds of the harness's own evaluation batches, an honest best_vloss never falls more than
    VLOSS_MARGIN below the floor (below the floor itself with probability ~1/(FLOOR_REPEATS + 1)), while a fixed
    distance to the whole split (VLOSS_SLACK alone, no harder test half) flags some of them. (What the floor
    catches, fakes larger than the batches' own spread, is tested on trained candidates in test_trusted_runner.)"""
    losses = easy_passage_losses()
    floor = batch_floor(losses, 101)
    assert floor == batch_floor(losses, 101)  # seeded: a verdict reproduces
    assert batch_floor(losses, 11) >= floor  # fewer evaluations: a floor no lower
    minima = [harness_minimum(losses, seed) for seed in range(200)]
    assert min(minima) >= floor - VLOSS_MARGIN
    assert sum(m < floor for m in minima) <= 3
    assert sum(m < losses.mean() - VLOSS_SLACK for m in minima) >= 1  # the slack alone flags honest runs


def test_below_the_slack_a_best_vloss_the_models_batches_reach_is_no_violation():
    """1.6 and 1.7 nats below the trusted test loss of 5.2 (past the slack of 1.0): the first is within
    VLOSS_MARGIN of the floor the runner measured (an easy batch), the second is not; within the slack, a best_vloss
    far below the floor (a model better earlier in its run than at its end) is no violation either."""
    floor = 3.7
    verdicts = []
    for value, slack in ((floor - 0.1, VLOSS_SLACK), (floor - 0.2, VLOSS_SLACK), (3.0, 2.5)):
        payload = returned("builtins.float", value=value)
        payload["trusted"]["batch_floor"] = floor
        record = {"violations": [], "heldout": {"evaluations": 1}}
        judge_run(record, payload, 3, "module", slack)
        assert record["trusted_batch_floor"] == floor
        verdicts.append(record["violations"])
    assert verdicts[0] == [] and verdicts[2] == []
    assert len(verdicts[1]) == 1 and "and more than 0.15 below 3.7000" in verdicts[1][0], verdicts[1]


def test_evaluations_follow_the_fixed_interval():
    assert [evaluations(n) for n in (10001, 10000, 2000, 3, 0)] == [101, 100, 20, 1, 0]


def test_rejudge_applies_todays_rules_from_the_saved_findings(tmp_path):
    rdir = tmp_path / "runs" / "x" / "seed0"
    rdir.mkdir(parents=True)
    (rdir / "returned.json").write_text(json.dumps(returned("builtins.float", value=5.2 - 1.3)))
    record = {
        "violations": ["an old verdict"],
        "expected_iters": 3,
        "layout": "module",
        "log": "runs/x/seed0/train.log",
    }
    wide = rejudge(record, tmp_path, 1.6)
    assert wide["violations"] == [] and wide["rejudged_from"] == ["an old verdict"]
    strict = rejudge(record, tmp_path, 1.0)
    assert len(strict["violations"]) == 1 and "nats below" in strict["violations"][0]
    assert rejudge({"best_vloss": 4.0}, tmp_path, 1.0) == {"best_vloss": 4.0}  # an untrusted old record
    (rdir / "returned.json").unlink()
    assert rejudge(record, tmp_path, 1.6) is record  # findings gone: kept as recorded
