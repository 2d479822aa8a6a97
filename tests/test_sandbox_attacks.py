"""Issue #33's attacks on the trusted runner, one test per class, each written as the attack is: a cheating candidate
(today's train_mps.py or model.py with a textual edit, runner_helpers.edit asserting each anchor) run through
execute_run on tiny data. Each must be caught: the run is flagged with a violation naming the cause, or it
fails saying why, or the attack gains nothing. They run under the real sandbox (bubblewrap; test_sandbox.py fails
where it is missing, so CI cannot skip them).

Classes (the issue's list): reading held-out data; reading or patching the scorer; information across the scoring
batch (rows, calls); work outside the clock; state across runs; forging records; work the hooks do not see; a fixed
seed.
"""

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from runner_helpers import MAX_ITERS, edit, processes_with, run, source

from odegpt_eval import sandbox as sandboxes
from odegpt_eval import scoring
from odegpt_eval.files import sha256
from odegpt_eval.report import render_markdown
from odegpt_eval.runs import execute_run, finished, run_dir
from odegpt_eval.specs import SOURCE_FILES, Config
from odegpt_eval.summary import ranked, seed_insensitive, summarize

FIRST_LINE = "    t0 = time.time()  # first line, as in the original train_mps.py: loading the data counts\n"
RETURN = "    return best_vloss, elapsed_min\n"
HEAD = "        logits, loss = self.head(x, targets)\n"  # model.py's GPT.forward, where inference gets its logits
STEP = "    for opt in optimizers:\n        opt.step()\n    return loss\n"  # the end of train_mps.train_step


def at_start_of_train(code: str) -> str:
    return edit(source("train_mps.py"), FIRST_LINE, FIRST_LINE + code)


def before_return(code: str) -> str:
    return edit(source("train_mps.py"), RETURN, code + RETURN)


def cheat_at_inference(helper: str) -> str:
    """model.py whose inference (no targets) passes its logits through `_cheat(model, logits, idx)`, defined by
    `helper` at the end of the file; training is untouched, so the weights are the canonical's."""
    text = edit(
        source("model.py"), HEAD, HEAD + "        if targets is None:\n            logits = _cheat(self, logits, idx)\n"
    )
    return text + "\n\n" + helper


def rdir_of(r: dict) -> Path:
    return Path(r["heldout"]["candidate_data_dir"]).parent


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


@pytest.fixture(scope="module")
def canonical(canonical_run):
    """The honest run every attack on the same data is compared with (runner_helpers)."""
    return canonical_run


def test_attacks_run_under_the_sandbox(canonical):
    assert canonical["sandbox"]["name"] == "bubblewrap" and canonical["sandbox"]["trusted"]


# --- 1. reading held-out data -------------------------------------------------------------------------------------

SNOOP = """\
    import json as _json, os as _os
    _found = {}
    for _p in PATHS:  # the user's data folder and its val.bin, the run's folder: named by the test, as a user would
        try:
            _found[_p] = sorted(_os.listdir(_p)) if _os.path.isdir(_p) else _os.path.getsize(_p)
        except OSError as _e:
            _found[_p] = type(_e).__name__
    _found["cmdline"] = open("/proc/self/cmdline").read()
    _found["environ"] = dict(_os.environ)
    with open(_os.path.join(_os.environ["TRAIN_MPS_OUT_DIR"], "found.json"), "w") as _f:
        _json.dump(_found, _f)
"""


@pytest.mark.parametrize("sandbox", ["bubblewrap", "none"])
def test_the_held_out_split_and_the_users_data_are_out_of_reach(tmp_path, data, sandbox):
    """Under bubblewrap the candidate finds neither the source val.bin, nor the user's data folder, nor the runner's
    files in its run folder, nor their paths on its command line or in its environment. Without a sandbox it reads
    the held-out split, and the report marks the run untrusted: the test can fail."""
    rdir = run_dir(tmp_path / "out", "snoop", 0)
    paths = [str(data / "val.bin"), str(data), str(rdir)]
    box = sandboxes.choose(sandbox)[0]
    r = run(tmp_path, "snoop", train_mps=at_start_of_train(SNOOP.replace("PATHS", repr(paths))), data=data, sandbox=box)
    assert r["status"] == "ok", r.get("error")
    found = json.loads((rdir / "out" / "found.json").read_text())
    if sandbox == "none":
        assert found[str(data / "val.bin")] == (data / "val.bin").stat().st_size  # the held-out split, read
        summary = summarize([r], ["snoop"], "snoop")
        assert summary["unsandboxed_runs"] == ["snoop seed 0"] and r["sandbox"]["trusted"] is False
        report = {"settings": {"configs": ["snoop"], "seeds": [0]}, "summary": summary, "runs": [r], "environment": {}}
        report["order"] = [{"index": 0, "config": "snoop", "seed": 0}]
        assert "ran without a sandbox" in render_markdown(report)
        return
    assert found[str(data / "val.bin")] == "FileNotFoundError" and found[str(data)] == "FileNotFoundError"
    assert found[str(rdir)] == ["data", "out"]  # no run.json, returned.json, train.log, model.pt: the runner's
    leak = [str(data), "test_sha256", "test_start"]
    assert not [x for x in leak if x in found["cmdline"] or x in json.dumps(found["environ"])]
    assert r["violations"] == []


# --- 2. reading or patching the scorer ----------------------------------------------------------------------------

PEEK = """\
def _cheat(model, logits, idx):
    import sys

    import numpy as np

    answer, frame = None, sys._getframe(1)
    while frame is not None and answer is None:  # the targets off the stack: any longer rows that start with idx
        for value in list(frame.f_locals.values()):
            a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            b, t = idx.shape
            if isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[0] == b and a.shape[1] > t and a.dtype.kind in "iu":
                if np.array_equal(a[:, :t], idx.cpu().numpy()):
                    answer = torch.as_tensor(a[:, t])
                    break
        frame = frame.f_back
    runner = sorted(n for n in sys.modules if n.split(".")[0] in ("benchmark", "odegpt_eval", "scoring"))
    import importlib

    for name in ("benchmark", "odegpt_eval.scoring"):  # the runner's modules, to scale its loss function
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        real = module.nll_of_logits
        module.nll_of_logits = lambda logits, targets: 0.9 * real(logits, targets)
        runner.append(f"patched {name}")
    print("PEEK", answer is not None, runner, flush=True)
    if answer is not None:
        logits = logits.clone()
        logits[torch.arange(len(answer)), -1, answer] += 100.0
    return logits
"""


def test_the_scorer_holds_no_targets_and_no_runner_code(tmp_path, data, canonical):
    """The model looks for its answers on the Python stack and for the runner's module to patch: the scoring child
    holds neither, so it finds nothing and scores exactly as the canonical."""
    r = run(tmp_path, "peek", model=cheat_at_inference(PEEK), data=data)
    log = (rdir_of(r) / "score.log").read_text()
    assert "PEEK False []" in log and "PEEK True" not in log, log[-2000:]
    assert r["violations"] == [] and r["trusted_test_loss"] == canonical["trusted_test_loss"]


# --- 3. information across the scoring batch ----------------------------------------------------------------------

NEXT_ROW = """\
def _cheat(model, logits, idx):
    # at the last prefix length, the next row's first token is this row's answer when windows are adjacent
    if idx.shape[1] == model.config.block_size and idx.shape[0] > 1:
        logits = logits.clone()
        rows = torch.arange(idx.shape[0] - 1)
        logits[rows, -1, idx[1:, 0]] += 100.0
    return logits
"""

# A cache of every token the scoring process has been shown, in memory shared by all its forks (made before the
# first fork), that boosts what it has seen: test-time adaptation across calls, and across the rows of a call.
CACHE = """\
import mmap as _mmap

_SEEN = _mmap.mmap(-1, 4 * 50304)  # shared with every fork of the scoring process


def _cheat(model, logits, idx):
    counts = torch.frombuffer(_SEEN, dtype=torch.int32)
    for token in idx.reshape(-1).tolist():
        counts[token] += 1
    return logits + 3.0 * torch.log1p(counts[: logits.shape[-1]].float())
"""


def test_no_row_of_a_call_reveals_another_rows_answer(tmp_path, data, canonical):
    r = run(tmp_path, "next_row", model=cheat_at_inference(NEXT_ROW), data=data)
    assert r["status"] == "ok"
    gained = r["trusted_test_loss"] is not None and r["trusted_test_loss"] < canonical["trusted_test_loss"]
    assert not gained and (r["violations"] or r["trusted_test_loss"] > canonical["trusted_test_loss"])


def test_state_carried_between_scoring_calls_is_caught_by_the_audit(tmp_path):
    """On text of 40 distinct tokens a cache of what the scorer was shown would take the loss from ~10.8 to ~4; the
    runner's audit asks some calls again elsewhere, and the cached answers differ."""
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 50257, 4000).astype(np.uint16).tofile(d / "train.bin")
    rng.choice(rng.integers(0, 50257, 40), 1000).astype(np.uint16).tofile(d / "val.bin")
    r = run(tmp_path, "cache", model=cheat_at_inference(CACHE), data=d)
    assert r["status"] == "ok"
    assert any("keeps state between scoring calls or reads other rows" in v for v in r["violations"]), r["violations"]
    assert not ranked(r)


def test_a_scoring_plan_never_shows_a_target_to_the_fork_that_predicts_it():
    for n in (1, 2, 7, 64, 65, 281):
        calls = scoring.plan_calls("test", n, 64)
        assert scoring.revealed(calls, 64) == []
        assert sorted((w, c.length) for c in calls for w in c.windows) == [
            (w, j) for w in range(n) for j in range(1, 65)
        ]
    adjacent = [scoring.Call("test", 0, 0, (0, 1), 64)]  # and the check can fail
    assert scoring.revealed(adjacent, 64) == [(0, 0)]


# --- 4. work outside the clock ------------------------------------------------------------------------------------

AFTER_RETURN = """\
    import atexit as _atexit, threading as _threading
    _threading.Thread(target=time.sleep, args=(2.0,)).start()  # training on after train() returned
    _atexit.register(time.sleep, 1.5)  # and in an exit handler
"""

SLOW_SCORING = """\
def _cheat(model, logits, idx):
    import time

    time.sleep(0.02)  # work done while scored
    return logits
"""


def test_work_after_train_returns_is_on_the_clock(tmp_path, data):
    r = run(tmp_path, "after", train_mps=before_return(AFTER_RETURN), data=data)
    assert r["status"] == "ok" and r["violations"] == []
    assert r["trusted_outside_train_min"] * 60 >= 3.5  # the thread's 2 s and the exit handler's 1.5 s, on the clock
    assert r["trusted_elapsed_min"] * 60 >= r["trusted_train_span_min"] * 60 + 3.5


def test_scoring_beyond_its_budget_is_charged_to_the_run(tmp_path, data, monkeypatch):
    monkeypatch.setattr(scoring, "SCORING_BASE_S", 2.0)
    monkeypatch.setattr(scoring, "SCORING_PER_CALL_S", 0.0)
    monkeypatch.setattr(scoring, "SCORING_TIMEOUT_FACTOR", 1000.0)  # charged, not killed
    r = run(tmp_path, "slow", model=cheat_at_inference(SLOW_SCORING), data=data)
    calls = json.loads((rdir_of(r) / "returned.json").read_text())["trusted"]["scoring_calls"]
    assert r["trusted_scoring_s"] > 0.02 * calls > 2.0
    assert r["trusted_scoring_charged_s"] == pytest.approx(r["trusted_scoring_s"] - 2.0)
    assert r["trusted_elapsed_min"] == pytest.approx(r["trusted_sandbox_min"] + r["trusted_scoring_charged_s"] / 60)


# --- 5. state across runs -----------------------------------------------------------------------------------------

PERSIST = """\
    import os as _os, sys as _sys
    _places = [_os.path.expanduser("~"), _os.environ.get("XDG_CACHE_HOME", "/tmp"), "/tmp", "/dev/shm",
               _os.path.dirname(_os.path.abspath(__file__)), _os.environ["TRAIN_MPS_DATA_DIR"]]
    for _p in _places:
        if _os.path.exists(_os.path.join(_p, "odegpt-cache")):
            print("STATE FOUND in", _p, flush=True)
        try:
            _os.makedirs(_p, exist_ok=True)
            open(_os.path.join(_p, "odegpt-cache"), "w").write("weights of an earlier run")
        except OSError as _e:
            print("cannot write", _p, type(_e).__name__, flush=True)
    if _os.fork() == 0:  # a daemon: out of the run's session and process group, writing on and on
        _os.setsid()
        if _os.fork() == 0:
            _beat = _os.path.join(_os.environ["TRAIN_MPS_OUT_DIR"], "heartbeat")
            while True:
                with open(_beat, "a") as _f:
                    _f.write("x")
                time.sleep(0.05)
        _os._exit(0)
"""


def test_nothing_outlives_a_run_or_persists_into_the_next(tmp_path, data):
    text = at_start_of_train(PERSIST)
    first = run(tmp_path, "persist", train_mps=text, data=data, seed=0)
    assert first["status"] == "ok", first.get("error")
    beat = rdir_of(first) / "out" / "heartbeat"
    size = beat.stat().st_size
    assert size > 0  # the daemon ran while its run did
    time.sleep(1.0)
    assert beat.stat().st_size == size and processes_with(first["source_dir"]) == []  # and died with it
    second = run(tmp_path, "persist", train_mps=text, data=data, seed=1)
    log = (rdir_of(second) / "train.log").read_text()
    assert second["status"] == "ok" and "STATE FOUND" not in log, log[-2000:]
    assert "cannot write " + first["source_dir"] in log  # its own source folder is read-only


# --- 6. forging records -------------------------------------------------------------------------------------------

FORGE = """\
    import atexit as _atexit, os as _os, sys as _sys

    def _forge():
        _sys.path.append(_os.path.dirname(_sys.modules["__main__"].__file__))
        import wire as _wire

        fake = {"kind": "return", "returned": [{"type": "builtins.float", "value": 0.1}] * 2, "monitor": {}}
        for _fd in range(3, 64):  # the evidence pipe, wherever it is
            try:
                if "pipe" in _os.readlink(f"/proc/self/fd/{_fd}"):
                    _wire.write_frame(_fd, fake)
            except OSError:
                pass
        _run = _os.path.dirname(_os.environ["TRAIN_MPS_OUT_DIR"])
        for _name in ("returned.json", "run.json"):  # the runner's findings, rewritten after it wrote them
            try:
                open(_os.path.join(_run, _name), "w").write('{"status": "ok", "violations": []}')
            except OSError:
                pass
        try:  # another configuration's saved copy
            open(SNAPSHOT, "w").write("raise SystemExit('knocked out')")
        except OSError as _e:
            print("cannot write the snapshot:", type(_e).__name__, flush=True)

    _atexit.register(_forge)
"""


def test_records_cannot_be_forged_from_the_candidates_process(tmp_path, data, canonical):
    other = tmp_path / "out" / "sources" / "canonical"
    other.mkdir(parents=True)
    (other / "train_mps.py").write_text(source("train_mps.py"))
    text = before_return(FORGE.replace("SNAPSHOT", repr(str(other / "train_mps.py"))))
    r = run(tmp_path, "forge", train_mps=text, data=data)
    assert any("candidate code wrote to it" in v for v in r["violations"]), r["violations"]
    assert r["best_vloss"] == canonical["best_vloss"] != 0.1  # the first report, the runner's child's
    found = json.loads((rdir_of(r) / "returned.json").read_text())
    assert found["trusted"]["test_loss"] == canonical["trusted_test_loss"]  # the runner's file, not the forgery
    assert json.loads((rdir_of(r) / "run.json").read_text())["violations"] == r["violations"]
    assert (other / "train_mps.py").read_text() == source("train_mps.py")
    assert "cannot write the snapshot: FileNotFoundError" in (rdir_of(r) / "train.log").read_text()


def test_a_saved_copy_changed_after_the_start_is_not_run(tmp_path, data):
    snapshot = tmp_path / "out" / "sources" / "folder-x"
    snapshot.mkdir(parents=True)
    for name in ("train_mps.py", "model.py"):
        (snapshot / name).write_text(source(name))
    expected = {f: sha256(snapshot / f) for f in SOURCE_FILES}
    (snapshot / "train_mps.py").write_text(source("train_mps.py") + "\n# rewritten by another run\n")
    config = Config("x", "folder", str(snapshot), snapshot.name, None)
    r = execute_run(config, 0, 0, tmp_path / "out", data, MAX_ITERS, expected_sources=expected)
    assert r["status"] == "failed" and "changed since the benchmark started" in r["error"]
    assert "train_mps.py" in r["error"] and not finished(r)


# --- 7. work the hooks do not see ---------------------------------------------------------------------------------

HIDDEN = {
    # the monitor found through the garbage collector and paused around a second step on the same gradients
    "paused_monitor": (
        STEP,
        "    for opt in optimizers:\n        opt.step()\n"
        "    import gc\n\n    monitors = [o for o in gc.get_objects() if type(o).__name__ == 'TrainingMonitor']\n"
        "    for m in monitors:\n        m.paused = True\n    for opt in optimizers:\n        opt.step()\n"
        "    for m in monitors:\n        m.paused = False\n    return loss\n",
        "steps the hooks did not see",
    ),
    # a second optimizer on the same parameters, in plain sight
    "second_optimizer": (
        STEP,
        "    for opt in optimizers:\n        opt.step()\n"
        "    torch.optim.SGD(params, lr=1e-3).step()\n    return loss\n",
        "or a second optimizer",
    ),
    # another forward and backward per step, through model.forward rather than model(...)
    "extra_forward": (
        "    total_loss.backward()\n",
        "    model.forward(xb.flip(0), yb.flip(0))[1].backward()\n    total_loss.backward()\n",
        "models were trained, not one",
    ),
    # a shadow model trained on 4x the batch with the monitor paused, kept alive
    "shadow_model": (
        STEP,
        "    for opt in optimizers:\n        opt.step()\n"
        "    import copy, gc\n\n    monitors = [o for o in gc.get_objects() if type(o).__name__ == 'TrainingMonitor']\n"
        "    for m in monitors:\n        m.paused = True\n"
        "    if not hasattr(model, 'shadow'):\n"
        "        object.__setattr__(model, 'shadow', copy.deepcopy(model))\n"
        "        object.__setattr__(model, 'shadow_opt', torch.optim.AdamW(model.shadow.parameters(), lr=1e-3))\n"
        "    model.shadow(xb.repeat(4, 1), yb.repeat(4, 1))[1].backward()\n    model.shadow_opt.step()\n"
        "    for m in monitors:\n        m.paused = False\n    return loss\n",
        "another model was trained",
    ),
}


@pytest.mark.parametrize("attack", list(HIDDEN))
def test_training_work_out_of_the_hooks_sight_is_flagged(attack, tmp_path, data):
    anchor, replacement, reason = HIDDEN[attack]
    # 6 iterations: a hidden step after the last counted one shows in no value check, so the paused monitor's
    # bound is 2 x 6 - 1 = 11, past the slack (6 x 1.01 + 2); at 3 iterations it would be 5, within it
    r = run(tmp_path, attack, train_mps=edit(source("train_mps.py"), anchor, replacement), data=data, max_iters=6)
    assert r["status"] == "ok", r.get("error")
    assert any(reason in v for v in r["violations"]), r["violations"]


def test_the_canonical_writes_its_parameters_once_per_step(canonical):
    """The canonical's AdamW is fused (issue #32), which bumps no version counter: the bound is the values'."""
    worst = canonical["monitor"]["updates"]["worst"]
    assert worst["basis"] == "values" and worst["changed_between_steps"] == 0
    assert worst["steps_lower_bound"] == worst["counted_steps"] == MAX_ITERS
    assert canonical["monitor"]["other_trained"] == {"parameters": 0, "max_updates": 0}


# --- 8. a fixed seed ----------------------------------------------------------------------------------------------


def test_a_candidate_that_ignores_the_seed_is_not_ranked(tmp_path, data):
    text = edit(source("train_mps.py"), "    r = seed_from_env(recipe or Recipe())\n", "    r = recipe or Recipe()\n")
    runs = [run(tmp_path / f"s{seed}", "fixed", train_mps=text, data=data, seed=seed) for seed in (0, 1)]
    assert all(r["status"] == "ok" and r["violations"] == [] for r in runs)
    assert runs[0]["trusted_test_loss"] == runs[1]["trusted_test_loss"]
    summary = summarize(runs, ["fixed"], "fixed")
    assert summary["configs"]["fixed"]["n"] == 0
    assert [e["seed"] for e in summary["excluded"]] == [0, 1]
    assert all("the seed made no difference" in e["violations"][0] for e in summary["excluded"])
    # an honest configuration's seeds differ, and it is ranked
    assert seed_insensitive([{**r, "trusted_test_loss": r["trusted_test_loss"] + r["seed"]} for r in runs]) == {}
    assert math.isfinite(runs[0]["trusted_test_loss"]) and os.path.isdir(runs[0]["source_dir"])
