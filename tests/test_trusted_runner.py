"""The benchmark's trusted runner (scripts/benchmark.py): it, not the candidate, produces the figures it ranks.

Each attack is a small textual edit of today's train_mps.py or model.py (copied at test time; each anchor asserted),
run through execute_run for MAX_ITERS iterations on tiny data (a few seconds a run, one thread), the
way the issue's 30 cheating variants were written. execute_run is called directly: scripts/check_constraints.py
refuses some of the edits before they run, and the runner must catch them anyway.
"""

import hashlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, write_bins
from runner_helpers import MAX_ITERS, edit, processes_with, run, source

from odegpt_eval import benchmark, judge
from odegpt_eval.judge import judge_run
from odegpt_eval.report import render_markdown
from odegpt_eval.runs import default_timeout_min, finished, run_dir
from odegpt_eval.scoring import trusted_test_loss
from odegpt_eval.specs import FIXED
from odegpt_eval.splits import make_candidate_data, split_validation
from odegpt_eval.summary import ranked, summarize
from parity_tests import tolerances as T

RETURN = "    return best_vloss, elapsed_min\n"


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


@pytest.fixture
def strict_clock():
    """The elapsed check's 0.1 min floor is for full runs; these runs train for seconds, so it is off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(judge, "ELAPSED_SLACK_MIN", 0.0)
        yield


@pytest.fixture(scope="module")
def canonical(canonical_run):
    return canonical_run


def test_the_canonical_files_get_no_violations(canonical):
    r = canonical
    assert r["status"] == "ok" and r["violations"] == [], r["violations"]
    assert r["optimizer_steps"] == MAX_ITERS and r["training_forwards"] == MAX_ITERS
    assert r["training_batch_shapes"] == {"8x64": MAX_ITERS}
    assert r["scored_module"] == "evaluated copy"  # the EMA train() evaluates and ends with
    assert math.isfinite(r["trusted_test_loss"]) and r["trusted_elapsed_min"] > 0
    assert r["trusted_fitness"] == pytest.approx(r["trusted_test_loss"] + 0.01 * r["trusted_elapsed_min"])
    assert r["best_vloss"] == r["metrics"]["best_vloss"] and r["fitness"] is not None  # the candidate's own, kept
    assert r["wall_s"] > 60 * r["trusted_elapsed_min"] > 60 * r["elapsed_min"] > 0


def test_the_candidate_never_sees_the_held_out_split(canonical, data):
    """Its val.bin is the first part of the split, cut at a window boundary; the trusted loss is on the rest."""
    r, val = canonical, np.fromfile(data / "val.bin", dtype=np.uint16)
    h = r["heldout"]
    cut = h["test_start"]
    assert cut % 64 == 0 and cut == h["candidate_val_tokens"] and 0 < cut < len(val)
    folder = Path(h["candidate_data_dir"])
    assert r["metrics"]["data_dir"] == str(folder)  # train() read the runner-made folder
    assert (folder / "val.bin").read_bytes() == val[:cut].tobytes()
    assert (folder / "train.bin").read_bytes() == (data / "train.bin").read_bytes()
    assert h["test_sha256"] == hashlib.sha256(val[cut:].tobytes()).hexdigest()
    assert h["test_windows"] == (len(val) - cut - 1) // 64


def test_meta_json_of_the_runner_made_folder_describes_its_files(tmp_path, data):
    src = write_bins(tmp_path / "src")
    val = (src / "val.bin").read_bytes()
    meta = {
        "train_tokens": 4000,
        "val_tokens": len(val) // 2,
        "val_bin_sha256": hashlib.sha256(val).hexdigest(),
        "files": {"val.bin": {"bytes": len(val), "sha256": hashlib.sha256(val).hexdigest()}},
        "text_sha256": "kept",
    }
    (src / "meta.json").write_text(json.dumps(meta))
    h = make_candidate_data(src, tmp_path / "made")
    mine = (tmp_path / "made" / "val.bin").read_bytes()
    got = json.loads((tmp_path / "made" / "meta.json").read_text())
    assert got["val_tokens"] == len(mine) // 2 == h["candidate_val_tokens"] and got["train_tokens"] == 4000
    assert got["val_bin_sha256"] == hashlib.sha256(mine).hexdigest() == got["files"]["val.bin"]["sha256"]
    assert got["files"]["val.bin"]["bytes"] == len(mine) and got["text_sha256"] == "kept"
    assert set(got) == set(meta)  # the same keys, recomputed


def load_checkpoint_model(rdir):
    spec = importlib.util.spec_from_file_location("trusted_test_model", REPO / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    ckpt = torch.load(rdir / "out" / "ckpt.pt", weights_only=False)  # the candidate's writable folder
    model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def test_trusted_loss_equals_an_independent_full_window_computation(canonical, data):
    """From the checkpoint (train() writes the model it ends with), scoring every position of each held-out
    window at once with model(idx, targets) agrees with the runner's prefix-by-prefix scoring (a causal model)."""
    model = load_checkpoint_model(Path(canonical["heldout"]["candidate_data_dir"]).parent)
    val = np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64)
    test = torch.from_numpy(val[canonical["heldout"]["test_start"] :])
    n = (len(test) - 1) // 64
    x, y = test[: n * 64].view(n, 64), test[1 : n * 64 + 1].view(n, 64)
    with torch.no_grad():
        _, loss = model(x, y)
    # float32 computations of one loss in other batch shapes: within twice the derived bound (parity_tests/tolerances)
    bound = 2 * T.model_loss(model, y.numel(), loss.item())
    assert canonical["trusted_test_loss"] == pytest.approx(loss.item(), abs=bound)
    assert trusted_test_loss(model, test.numpy()) == pytest.approx(loss.item(), abs=bound)
    # on the candidate's half the runner's scoring agrees with train_mps.full_split_loss (the candidate's own
    # whole-split val), and the batch floor it draws from those losses lies below their mean
    own = canonical["val_loss_full"]
    assert canonical["trusted_candidate_val_loss"] == pytest.approx(own, abs=2 * T.model_loss(model, y.numel(), own))
    assert canonical["trusted_batch_floor"] < canonical["trusted_candidate_val_loss"]


def test_two_optimizers_per_iteration_count_as_one_step(tmp_path, data):
    """The Muon recipe steps Muon and AdamW each iteration: the runner counts the optimizer holding most of the
    trained model's parameters."""
    r = run(tmp_path, "muon", overrides={"optimizer": "muon"}, data=data)
    assert r["violations"] == [] and r["optimizer_steps"] == MAX_ITERS
    assert sorted(o["class"] for o in r["monitor"]["optimizers"]) == ["AdamW", "Muon"]


def returns(expression: str) -> str:
    return edit(source("train_mps.py"), RETURN, f"    return {expression}\n")


FAKED = {
    "alias_times_0.9": edit(
        source("train_mps.py"), RETURN, "    reported = best_vloss * 0.9\n    best_vloss = reported\n" + RETURN
    ),
    "constants": returns("1.0, 0.5"),  # judged in-process below: the same checks
    "float_subclass": edit(
        source("train_mps.py"),
        RETURN,
        "    class Score(float):\n        def __lt__(self, other):\n            return True\n\n"
        "    return Score(best_vloss), elapsed_min\n",
    ),
    "nan": returns('float("nan"), elapsed_min'),
    "minus_inf": returns("-math.inf, elapsed_min"),
    "negative": returns("best_vloss, -elapsed_min"),
    "not_a_pair": returns("best_vloss"),
}
FAKED_REASON = {
    "alias_times_0.9": "nats below the trusted test loss",
    "constants": "nats below the trusted test loss",
    "float_subclass": "Score, not a float",
    "nan": "not finite",
    "minus_inf": "not finite",
    "negative": "negative",
    "not_a_pair": "not a pair",
}


@pytest.mark.parametrize("attack", ["alias_times_0.9", "float_subclass", "nan", "minus_inf"])
def test_faked_results_are_violations_and_the_trusted_figures_are_unchanged(attack, tmp_path, data, canonical):
    r = run(tmp_path, attack, train_mps=FAKED[attack], data=data)
    assert r["status"] == "ok"
    assert any(FAKED_REASON[attack] in v for v in r["violations"]), r["violations"]
    # the same training as the canonical's: the runner's own figure does not move
    assert r["trusted_test_loss"] == canonical["trusted_test_loss"]


@pytest.mark.parametrize(
    "returned, reason",
    [
        ([{"type": "builtins.float", "value": 1.0}, {"type": "builtins.float", "value": 0.5}], "nats below"),
        ([{"type": "builtins.float", "value": 5.0}, {"type": "builtins.float", "value": -0.5}], "negative"),
        ([{"type": "builtins.int", "value": None}, {"type": "builtins.float", "value": 0.5}], "builtins.int, not a"),
        ([{"type": "builtins.float", "value": "inf"}, {"type": "builtins.float", "value": 0.5}], "not finite"),
        (None, "not a pair"),
    ],
)
def test_faked_results_judged_from_the_runners_findings(canonical, returned, reason):
    """The other fakes (constants, a negative time, an int, a single value), judged from the subprocess's findings
    as execute_run does, without training again."""
    payload = json.loads((Path(canonical["heldout"]["candidate_data_dir"]).parent / "returned.json").read_text())
    record = {"violations": []}
    judge_run(record, {**payload, "returned": returned, "returned_repr": "x"}, MAX_ITERS)
    assert any(reason in v for v in record["violations"]), record["violations"]
    assert record["trusted_test_loss"] == canonical["trusted_test_loss"]


SHORTENED = {
    "half_the_loop": ("    for it in range(n_iters):\n", "    for it in range(n_iters // 2):\n", "optimizer steps"),
    "break": (
        "        set_lr(optimizers, base_lrs, lr_at(it, n_iters, r))\n",
        "        if it >= 2:\n            break\n        set_lr(optimizers, base_lrs, lr_at(it, n_iters, r))\n",
        "optimizer steps",
    ),
    "shrunken_batch": (
        "loss = train_step(model, optimizers, params, xb, yb, r, extra_loss)",
        "loss = train_step(model, optimizers, params, xb[:2], yb[:2], r, extra_loss)",
        "training batches of shape {'2x64': 6}",
    ),
}


@pytest.mark.parametrize("attack", list(SHORTENED))
def test_less_training_is_a_violation(attack, tmp_path, data):
    anchor, replacement, reason = SHORTENED[attack]
    r = run(tmp_path, attack, train_mps=edit(source("train_mps.py"), anchor, replacement), max_iters=6, data=data)
    assert any(reason in v for v in r["violations"]), r["violations"]


def test_patching_time_in_model_py_does_not_reach_the_runners_clock(tmp_path, data, canonical, strict_clock):
    patch = (
        "import math\n"
        "import time as _time\n"
        "_wall, _perf = _time.time, _time.perf_counter\n"
        "_time.time = lambda: _wall() / 4\n"
        "_time.perf_counter = lambda: _perf() / 4\n"
    )
    r = run(tmp_path, "time_patch", model=edit(source("model.py"), "import math\n", patch), data=data)
    assert any("below the runner's clock" in v for v in r["violations"]), r["violations"]
    assert r["elapsed_min"] < 0.5 * r["trusted_train_min"]
    assert r["trusted_test_loss"] == canonical["trusted_test_loss"]


def test_resetting_t0_after_the_loop_is_a_violation(tmp_path, data, strict_clock):
    anchor = '    if dev == "mps":\n        torch.mps.synchronize()\n'  # after the loop, before the clock stops
    text = edit(source("train_mps.py"), anchor, "    t0 = time.time()\n" + anchor)
    r = run(tmp_path, "reset_t0", train_mps=text, data=data)
    assert any("below the runner's clock" in v for v in r["violations"]), r["violations"]
    assert r["elapsed_min"] < 0.01 < r["trusted_elapsed_min"]


def test_training_on_val_gains_nothing_on_the_held_out_split(tmp_path):
    """Training on the candidate's val.bin (a repeated pattern here) improves its own best_vloss, not the trusted
    test loss: the held-out split (other tokens) is not in the candidate's val.bin."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    d.mkdir()
    rng.integers(0, 1000, 4000).astype(np.uint16).tofile(d / "train.bin")
    cut = split_validation(1000)
    pattern = np.resize(np.arange(64, dtype=np.uint16), cut)
    np.concatenate([pattern, rng.integers(0, 1000, 1000 - cut).astype(np.uint16)]).tofile(d / "val.bin")
    fast = {"warmup_iters": 1, "ema_decay": 0.0, "learning_rate": 1e-2}
    text = edit(
        source("train_mps.py"),
        "xb, yb = get_batch(train_data, train_gen)",
        "xb, yb = get_batch(val_data, train_gen)",
    )
    honest = run(tmp_path / "honest", "honest", overrides=fast, max_iters=30, data=d)
    on_val = run(tmp_path / "on_val", "on_val", train_mps=text, overrides=fast, max_iters=30, data=d)
    assert honest["violations"] == []
    # the candidate's own whole-split val (its val.bin, at the end; 30 iterations hold one evaluation only) says
    # it is better; the runner's says it is not
    assert on_val["val_loss_full"] < honest["val_loss_full"] - 1.0
    assert on_val["trusted_test_loss"] > honest["trusted_test_loss"]
    made = np.fromfile(Path(on_val["heldout"]["candidate_data_dir"]) / "val.bin", dtype=np.uint16)
    assert np.array_equal(made, pattern)  # all the candidate had to train on
    # either it broke a bound (here: its own best_vloss claims far better than the trusted test loss) and is not
    # ranked, or it is ranked behind the honest run
    summary = summarize([honest, on_val], ["honest", "on_val"], "honest")["configs"]
    ranked = summary["on_val"]["trusted_fitness"]["median"]
    assert (ranked is None and on_val["violations"]) or ranked > summary["honest"]["trusted_fitness"]["median"]


HANG_MARKER = "613.25"  # the argument of the `sleep` the hanging candidate starts: how the tests find it
HANG = (
    "    data_dir = find_data_dir()\n",
    f'    import subprocess\n\n    subprocess.Popen(["sleep", "{HANG_MARKER}"])\n    time.sleep(600)\n'
    "    data_dir = find_data_dir()\n",
)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_hanging_candidate_times_out_and_every_process_of_it_is_killed(tmp_path, data):
    text = edit(source("train_mps.py"), *HANG)
    t = time.perf_counter()
    r = run(tmp_path, "hang", train_mps=text, data=data, timeout_min=0.1)
    assert time.perf_counter() - t < 30
    assert r["status"] == "timeout" and any(v.startswith("timeout") for v in r["violations"])
    folder = r["source_dir"]  # on the training child's command line
    assert processes_with(folder) == [] and processes_with(f"sleep {HANG_MARKER}") == []
    assert not ranked(r) and not finished(r)  # never ranked; --resume retries it


DRIVER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from odegpt_eval import benchmark
benchmark.check_train_mps = lambda source, filename: []  # the hang would pass or not: not what is tested here
sys.exit(benchmark.main(sys.argv[2:]))
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_sigterm_to_the_benchmark_kills_every_training_process(tmp_path, data):
    candidate = tmp_path / "hang"
    candidate.mkdir()
    (candidate / "train_mps.py").write_text(edit(source("train_mps.py"), *HANG))
    (candidate / "model.py").write_text(source("model.py"))
    out = tmp_path / "out"
    argv = ["--configs", str(candidate), "--seeds", "0", "--max-iters", "3", "--data-dir", str(data), "--out", str(out)]
    parent = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(REPO), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = run_dir(out, str(candidate), 0) / "running.json"
    deadline = time.monotonic() + 60
    while not running.exists() and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
    assert running.exists(), parent.communicate()[0]
    while not processes_with(f"sleep {HANG_MARKER}") and time.monotonic() < deadline:  # the child's `sleep`
        time.sleep(0.2)
    assert len(processes_with(f"sleep {HANG_MARKER}")) == 1
    snapshot = str(out / "sources")  # the training child's command line names its saved copy
    assert processes_with(snapshot)
    parent.send_signal(signal.SIGTERM)
    output, _ = parent.communicate(timeout=30)
    assert parent.returncode == 130, output
    assert "killed 1 training process group" in output
    assert processes_with(snapshot) == [] and processes_with(f"sleep {HANG_MARKER}") == []
    record = json.loads((running.parent / "run.json").read_text())
    assert record["status"] == "interrupted"


def test_runs_with_violations_are_never_ranked(canonical):
    clean = {**canonical, "config": "a", "seed": 0}
    cheat = {**canonical, "config": "b", "seed": 0, "trusted_test_loss": -math.inf, "violations": ["returned x"]}
    summary = summarize([clean, cheat], ["a", "b"], "a")
    assert summary["configs"]["b"]["n"] == 0
    assert summary["configs"]["b"]["paired_vs_baseline"]["trusted_fitness"]["diffs"] == []
    assert summary["excluded"] == [{"config": "b", "seed": 0, "violations": ["returned x"]}]
    report = {
        "settings": {"configs": ["a", "b"], "seeds": [0]},
        "summary": summary,
        "runs": [clean, cheat],
        "order": [{"index": 0, "config": "a", "seed": 0}, {"index": 1, "config": "b", "seed": 0}],
        "environment": {},
        "complete": True,
    }
    md = render_markdown(report)
    assert "## Runs with violations (not ranked)" in md and "| `b` | 0 | returned x |" in md
    assert "Ranked by **trusted_fitness**" in md


def test_merging_a_report_made_before_the_trusted_runner_says_it_is_untrusted(tmp_path):
    out = tmp_path / "merged"
    assert benchmark.main(["--merge", str(REPO / "results" / "benchmark" / "ablations"), "--out", str(out)]) == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert report["summary"]["headline"] == "fitness"  # no trusted figures: ranked on the candidates' own
    assert len(report["summary"]["untrusted_runs"]) == len(report["runs"])
    assert "UNTRUSTED" in (out / "benchmark.md").read_text()


def test_fixed_values_match_the_harness_contract():
    import train_mps

    names = ("batch_size", "block_size", "max_iters", "eval_interval")
    assert FIXED == {k: getattr(train_mps, k) for k in names}
    assert default_timeout_min(None) == 240
    assert 5 < default_timeout_min(200) < 10
