"""Helpers of the trusted runner's tests (test_trusted_runner.py, test_sandbox_attacks.py): a candidate is today's
train_mps.py and model.py with a textual edit (each anchor asserted, so a change of the files fails loudly), run
through execute_run on tiny data; and what is left running afterwards."""

import os

from conftest import REPO

from odegpt_eval.runs import execute_run
from odegpt_eval.specs import Config

MAX_ITERS = 3


def source(name: str) -> str:
    return (REPO / name).read_text()


def edit(text: str, anchor: str, replacement: str) -> str:
    assert text.count(anchor) == 1, f"anchor not found once in today's file: {anchor!r}"
    return text.replace(anchor, replacement)


def run(root, name, train_mps=None, model=None, overrides=None, seed=0, data=None, **settings):
    """One run of a candidate folder (today's files, edited) under the trusted runner; its record. `settings`:
    execute_run's max_iters (default MAX_ITERS), timeout_min, sandbox."""
    out = root / "out"
    snapshot = out / "sources" / f"folder-{name}"
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "train_mps.py").write_text(train_mps or source("train_mps.py"))
    (snapshot / "model.py").write_text(model or source("model.py"))
    if overrides:  # a lever's fields (optimizer="muon") train through levers.py beside the two files
        (snapshot / "levers.py").write_text(source("levers.py"))
    config = Config(name, "folder", str(snapshot), snapshot.name, overrides)
    max_iters = settings.pop("max_iters", MAX_ITERS)
    return execute_run(config, seed, 0, out, data, max_iters, **settings)


def processes_with(marker: str) -> list[int]:
    """Processes still running (zombies waiting for their parent do not count) whose command line holds `marker`."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            state = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            alive.append(int(entry))
    return alive
