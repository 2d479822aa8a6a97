"""Trusted scoring, the runner's side of the prefix protocol.

The trained model is scored by a sandboxed scoring child (children/score_child.py) that loads the candidate's
model.py and the exported model and nothing else. The runner sends it input prefixes and gets back the last
position's logits over the vocabulary; the targets stay here, and the cross-entropy is computed here
(logsumexp - the target's logit, in float32 as before). For every non-overlapping block_size window of a split and
every j = 1..block_size, the prefix window[:j] predicts token j: causal by construction.

A call holds at most ROWS_PER_CALL windows at one prefix length, and no row's target is an input of another row
of its call: window i's last target is window i+1's first token, so the last prefix length is asked of a block's
even and odd windows in separate calls; the shorter ones reveal nothing across rows. A group of calls is served by
one fresh fork of the loaded model (on the CPU) and is either one block of windows at j = 1 .. block_size - 1 in
that order (whatever a fork keeps from one call is part of the next call's own input) or one parity at the last
length; no fork sees a target of its calls, and nothing reaches the next group (a fork per call added ~35 ms to
each ~45 ms call; separate calls for even and odd windows at every length, 2x the calls). `revealed` checks a plan.

A model can still look at the other rows of a call for context, or keep state where the fork cannot stop it (CUDA,
or code that subverts the fork). The audit catches both: AUDIT_CALLS calls of each half, picked at random by the
runner after the fact, are asked again, a random half of their rows in a shuffled order, of the other half's
scoring process, at a random point of its sequence; an honest model gives each row the same log-probability
wherever and with whatever rows it is asked, a model that adapts to what it was shown or reads other rows does not.

The scoring's time is the runner's: SCORING_BASE_S + SCORING_PER_CALL_S per call is free (an honest model takes a
fraction of it), what goes beyond is charged to the run's trusted time, and beyond SCORING_TIMEOUT_FACTOR times
the budget the scoring processes are killed and the run has no trusted loss.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .children import wire
from .sandbox import CHILDREN, Confinement, Sandbox, base_env, cleanup, python_paths
from .specs import FIXED

ROWS_PER_CALL = 64
AUDIT_CALLS = 4  # per half
AUDIT_TOLERANCE = 1e-4  # nats: an honest row's log-probability moves by ~1e-7 with the batch it is in
SCORING_BASE_S = 60.0  # process start, imports and loading the model
SCORING_PER_CALL_S = 0.25  # an honest call of the canonical takes ~0.02 s on one CPU thread
SCORING_TIMEOUT_FACTOR = 10.0


class ScoringError(RuntimeError):
    """The model could not be scored (it failed to load, a call failed, or the protocol was broken)."""


@dataclasses.dataclass(frozen=True)
class Call:
    half: str  # "test" or "candidate_val"
    index: int  # position in its half's plan
    group: int  # calls of one group share their windows and are asked in increasing length by one fork
    windows: tuple[int, ...]  # window numbers, pairwise non-adjacent
    length: int  # prefix length j: the call predicts token j of each window


def plan_calls(half: str, n_windows: int, block_size: int, rows: int = ROWS_PER_CALL) -> list[Call]:
    """Every (window, prefix length) of a split once: blocks of `rows` windows, each asked at j = 1 ..
    block_size - 1 by one group, and at j = block_size by two groups of one call each (its even, its odd windows)."""
    calls: list[Call] = []
    group = 0
    for start in range(0, n_windows, rows):
        block = tuple(range(start, min(start + rows, n_windows)))
        calls += [Call(half, len(calls), group, block, j) for j in range(1, block_size)]
        for parity in (0, 1):
            group += 1
            if block[parity::2]:
                calls.append(Call(half, len(calls), group, block[parity::2], block_size))
        group += 1
    return calls


def revealed(calls: list[Call], block_size: int) -> list[tuple[int, int]]:
    """(call index, window) of every target that its group showed as an input before or with its call (token
    positions: window w's input j is w * block_size + j, its target at length j the next one). Empty for a sound
    plan."""
    seen: dict[int, set] = {}
    out = []
    for c in calls:
        shown = seen.setdefault(c.group, set())
        shown |= {w * block_size + k for w in c.windows for k in range(c.length)}
        out += [(c.index, w) for w in c.windows if w * block_size + c.length in shown]
    return out


def windows_of(tokens, block_size: int) -> np.ndarray:
    """The non-overlapping windows of block_size + 1 tokens (inputs and targets) of a split, (n, block_size + 1)."""
    data = np.asarray(tokens, dtype=np.int64)
    n = (len(data) - 1) // block_size
    if n < 1:
        raise ValueError(f"{len(data)} tokens hold no window of {block_size + 1}")
    return data[np.arange(n)[:, None] * block_size + np.arange(block_size + 1)[None, :]]


def nll_of_logits(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log_softmax(logits)[target] per row, normalised here whatever the child returned (float32 as the runner
    always computed it, then float64)."""
    import torch

    last = torch.from_numpy(logits.copy() if not logits.flags.writeable else logits)
    t = torch.from_numpy(np.asarray(targets, dtype=np.int64))[:, None]
    return (torch.logsumexp(last, dim=-1) - last.gather(1, t)[:, 0]).double().numpy()


def candidate_modules(model_py: Path, module: str) -> tuple[str, ...]:
    """The candidate's files the scoring child reads: model.py, and where the pickled classes live in another file
    of its folder (levers.py, which imports train_mps), that file and train_mps.py."""
    beside = Path(model_py).parent / f"{module}.py"
    if module == "model" or not beside.is_file():
        return (str(model_py),)
    return tuple(str(p) for p in (Path(model_py), beside, Path(model_py).parent / "train_mps.py") if p.is_file())


class ScoringProcess:
    """One sandboxed scoring child and the two pipes to it; frames from it are read by a thread into a queue, so
    a child that stops mid-frame cannot hang the runner past its deadline."""

    def __init__(self, sandbox: Sandbox, model_py: Path, weights: Path, module: str, device: str, threads: int, log):
        req_r, self.req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        argv = [sys.executable, "-E", "-s", "-B", str(CHILDREN / "score_child.py"), str(model_py), str(weights)]
        argv += [module, device, str(threads), str(req_r), str(resp_w)]
        env = {**base_env(), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        box = Confinement(
            read_only=(*candidate_modules(model_py, module), str(weights), str(CHILDREN), *python_paths()),
            env=tuple(env.items()),
            fresh_tmp=False,
        )
        self.proc = sandbox.start(
            argv, box, pass_fds=(req_r, resp_w), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        os.close(req_r)
        os.close(resp_w)
        self.frames: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self.read, args=(resp_r,), daemon=True)
        self.reader.start()

    def read(self, fd: int) -> None:
        try:
            while True:
                frame = wire.read_frame(fd)
                self.frames.put(frame)
                if frame is None:
                    return
        except wire.WireError as e:
            self.frames.put(e)
        finally:
            os.close(fd)

    def receive(self, deadline: float):
        try:
            frame = self.frames.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            raise ScoringError("scoring timed out: the scoring child answered nothing before the deadline") from None
        if isinstance(frame, wire.WireError):
            raise ScoringError(f"the scoring child broke the protocol: {frame}")
        if frame is None:
            raise ScoringError(f"the scoring child ended (exit {self.proc.poll()}) before answering")
        if frame[0].get("kind") == "error":
            raise ScoringError(str(frame[0].get("error")))
        return frame

    def ready(self, deadline: float) -> dict:
        header, _ = self.receive(deadline)
        if header.get("kind") != "ready":
            raise ScoringError(f"the scoring child said {header.get('kind')!r} before it was ready")
        return header

    def ask(self, prefixes: np.ndarray, call: int, deadline: float) -> np.ndarray:
        """The (rows, vocab) float32 logits the child returns for (rows, length) prefixes."""
        rows, length = prefixes.shape
        self.send({"kind": "prefixes", "call": call, "rows": rows, "length": length}, prefixes.astype(np.int64))
        header, payload = self.receive(deadline)
        shape = header.get("shape")
        if header.get("kind") != "logits" or header.get("call") != call or not isinstance(shape, list):
            raise ScoringError(f"the scoring child answered call {call} with {header!r}")
        if len(shape) != 2 or shape[0] != rows or not isinstance(shape[1], int) or len(payload) != 4 * rows * shape[1]:
            raise ScoringError(
                f"the scoring child returned logits of shape {shape} ({len(payload)} bytes) for {rows} rows"
            )
        return np.frombuffer(payload, dtype=np.float32).reshape(rows, shape[1])

    def send(self, header: dict, array=None) -> None:
        try:
            wire.write_frame(self.req_w, header, b"" if array is None else np.ascontiguousarray(array).tobytes())
        except OSError as e:  # the child closed its end: it ended, or never read
            raise ScoringError(f"the scoring child stopped reading its calls ({e})") from None

    def release(self) -> None:
        """Ends the fork serving the current group; the next call goes to a fresh one."""
        self.send({"kind": "release"})

    def close(self, timeout: float = 30.0) -> None:
        try:
            wire.write_frame(self.req_w, {"kind": "end"})
        except OSError:
            pass
        try:
            os.close(self.req_w)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        cleanup(self.proc)


def budget_s(n_calls: int) -> float:
    return SCORING_BASE_S + SCORING_PER_CALL_S * n_calls


def score(
    sandbox: Sandbox,
    model_py: Path,
    weights: Path,
    module: str,
    device: str,
    threads: int,
    halves: dict,
    block_size: int,
    log_path: Path,
    rng: random.Random | None = None,
) -> dict:
    """Per-target losses of both halves (`halves`: name -> tokens; the first is scored first) by the prefix
    protocol, one scoring child per half, with the cross-audit. Returns {name: (n_windows, block_size) float64},
    the audit, the calls and the wall time; raises ScoringError."""
    rng = rng or random.SystemRandom()
    windows = {h: windows_of(t, block_size) for h, t in halves.items()}
    plans = {h: plan_calls(h, len(w), block_size) for h, w in windows.items()}
    names = list(halves)
    audits = {h: sorted(rng.sample(range(len(plans[h])), min(AUDIT_CALLS, len(plans[h])))) for h in names}
    schedule = {}  # per process, its groups: each a list of (call, row order or None)
    for h, other in zip(names, names[1:] + names[:1]):  # each half's process also answers the other half's audits
        groups: dict[int, list] = {}
        for c in plans[h]:
            groups.setdefault(c.group, []).append((c, None))
        items = list(groups.values())
        for i in audits[other]:  # one call alone, half its rows shuffled, between two groups
            n = len(plans[other][i].windows)
            order = rng.sample(range(n), max(1, n // 2))
            items.insert(rng.randrange(len(items) + 1), [(plans[other][i], order)])
        schedule[h] = items
    n_calls = sum(len(g) for s in schedule.values() for g in s)
    budget = budget_s(n_calls)
    t0 = time.perf_counter()
    deadline = t0 + SCORING_TIMEOUT_FACTOR * budget
    losses = {h: np.full((len(w), block_size), np.nan) for h, w in windows.items()}
    audited: list[dict] = []
    with open(log_path, "w") as log:
        procs = {h: ScoringProcess(sandbox, model_py, weights, module, device, threads, log) for h in names}
        try:
            for h in names:
                ready = procs[h].ready(deadline)
                n = 0
                for group in schedule[h]:
                    for call, order in group:
                        rows = np.array(call.windows)[order] if order is not None else np.array(call.windows)
                        w = windows[call.half][rows]
                        logits = procs[h].ask(w[:, : call.length], n, deadline)
                        n += 1
                        if logits.shape[1] <= int(w[:, call.length].max()):
                            raise ScoringError(
                                f"the scoring child returned {logits.shape[1]} logits: fewer than the vocabulary"
                            )
                        nll = nll_of_logits(logits, w[:, call.length])
                        if order is None:
                            losses[call.half][rows, call.length - 1] = nll
                        else:
                            audited.append({"call": call, "rows": rows, "nll": nll, "by": h})
                    procs[h].release()
                procs[h].close()
        finally:
            for p in procs.values():
                p.kill()
    scoring_s = time.perf_counter() - t0
    worst = {"max_abs_diff": 0.0, "call": None}
    for a in audited:  # each audit against the same rows of the main pass
        diff = np.abs(a["nll"] - losses[a["call"].half][a["rows"], a["call"].length - 1])
        d = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf")
        if not d <= worst["max_abs_diff"]:
            worst = {
                "max_abs_diff": d,
                "call": f"{a['call'].half} windows {a['call'].windows[0]}.. prefix {a['call'].length}, asked again by the {a['by']} process",
            }
    return {
        "losses": losses,
        "scoring_s": scoring_s,
        "budget_s": budget,
        "calls": n_calls,
        "forked": ready.get("forked"),
        "audit": {"calls": len(audited), "tolerance": AUDIT_TOLERANCE, **worst},
    }


# The runner's own scoring of a model it built itself (a trusted model: fixed_block_probe, tests), in its process.


FLOOR_REPEATS = 1000


def trusted_token_losses(model, tokens, block_size: int = FIXED["block_size"], windows_per_batch: int = 64):
    """Cross-entropy (nats, float64 array of shape (n_windows, block_size)) of `model` at every target of every
    non-overlapping block_size window of `tokens` (the windows of train_mps.full_split_loss), computed by the
    runner from nanoGPT's inference call alone: for j = 1..T, model(window[:, :j]) (no targets) returns the last
    position's logits (b, 1, vocab), normalised here by log_softmax, and predicts token j. Causal by construction:
    no position sees a token after its target."""
    import numpy as np
    import torch

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_windows = (len(data) - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"{len(data)} tokens hold no window of {block_size + 1}")
    offsets = torch.arange(n_windows)[:, None] * block_size + torch.arange(block_size + 1)[None, :]  # (n, T + 1)
    windows = data[offsets].to(device)
    was_training = model.training
    model.eval()
    losses = np.zeros((n_windows, block_size))
    try:
        with torch.no_grad():
            for start in range(0, n_windows, windows_per_batch):
                w = windows[start : start + windows_per_batch]  # (b, T + 1)
                for j in range(1, block_size + 1):
                    out = model(w[:, :j])
                    logits = out[0] if isinstance(out, (tuple, list)) else out
                    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[0] != len(w):
                        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                        raise ValueError(f"model(idx) returned logits of shape {shape}, not (b, 1 or t, vocab)")
                    last = logits[:, -1, :].float()  # (b, vocab)
                    nll = torch.logsumexp(last, dim=-1) - last.gather(1, w[:, j : j + 1])[:, 0]  # -log_softmax[target]
                    losses[start : start + len(w), j - 1] = nll.double().cpu().numpy()
    finally:
        model.train(was_training)
    return losses


def trusted_test_loss(model, tokens, block_size: int = FIXED["block_size"], windows_per_batch: int = 64) -> float:
    """Mean cross-entropy (nats) of `model` over every non-overlapping block_size window of `tokens`: the mean of
    trusted_token_losses."""
    return float(trusted_token_losses(model, tokens, block_size, windows_per_batch).mean())


def evaluations(iters: int) -> int:
    """How many evaluations a run of `iters` iterations makes under the fixed block (at every iteration
    divisible by eval_interval, from 0): 101 for 10001."""
    return len(range(0, iters, FIXED["eval_interval"]))


def batch_floor(
    token_losses,
    n_evals: int,
    batch_size: int = FIXED["batch_size"],
    block_size: int = FIXED["block_size"],
    repeats: int = FLOOR_REPEATS,
    seed: int = 0,
) -> float:
    """The lowest loss one evaluation batch could plausibly have: the minimum, over repeats * n_evals batches of
    batch_size windows at random offsets (seeded, so the verdict reproduces), of the batch's mean of `token_losses`
    (the per-target losses in text order, flattened). A run evaluating n_evals times returns the min over n_evals
    such batches; this is the min over `repeats` times as many."""
    import numpy as np

    flat = np.asarray(token_losses, dtype=np.float64).ravel()
    starts = len(flat) - block_size + 1
    if starts < 1 or n_evals < 1:
        raise ValueError(f"{len(flat)} losses and {n_evals} evaluations give no batch of {block_size}")
    csum = np.concatenate([[0.0], np.cumsum(flat)])
    at = np.random.default_rng(seed).integers(0, starts, size=(repeats, n_evals, batch_size))
    windows = (csum[at + block_size] - csum[at]) / block_size  # (repeats, n_evals, batch_size) window means
    return float(windows.mean(-1).min())
