"""The training run: the training child (children/train_child.py) in a sandbox, the runner's clock around it, and
its evidence channel read as it arrives.

The clock is the runner's: from just before the sandbox is started to its end, which is the end of every process
in it (the PID namespace), so the child's imports, train(), anything train() left running (threads, exit handlers,
a daemon) and the export of the model are all inside it. Work outside train() is therefore counted in the ranked
time rather than judged: the runner cannot tell useful work from idle work there, and needs no evidence from the
candidate to charge it.

The evidence channel is a pipe whose write end only the child holds: frames arrive in order and are stamped with
the runner's clock on arrival; nothing can rewrite a frame once read. Candidate code in the child can write frames
too, so what arrives is evidence, checked for exactly one frame of each kind in order (`problems`), never a ranked
figure.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Callable

from .children import wire
from .sandbox import Confinement, Sandbox, cleanup

FRAMES = ("start", "import", "call", "return")  # what an honest child sends, in this order, once each


@dataclasses.dataclass
class Frame:
    at_s: float  # the runner's clock on arrival, from the sandbox's start
    header: dict
    payload: bytes


@dataclasses.dataclass
class TrainingRun:
    status: str | None  # None (it ended by itself), "timeout" or "interrupted"
    returncode: int | None
    pgid: int | None
    sandbox_s: float  # the runner's clock, from the sandbox's start to its end
    frames: list[Frame]
    channel_error: str | None


def run_training(
    sandbox: Sandbox,
    argv: list[str],
    box: Confinement,
    log,
    timeout_s: float,
    started: Callable[[int], None] = lambda pgid: None,
    ended: Callable[[int], None] = lambda pgid: None,
) -> TrainingRun:
    """argv with `{fd}` standing for the evidence pipe's write end; `started`/`ended` are told the process group
    (for the benchmark's kill on an interrupt). On a timeout, or any exception here, the group is killed."""
    read_fd, write_fd = os.pipe()
    argv = [a.replace("{fd}", str(write_fd)) for a in argv]
    frames: list[Frame] = []
    errors: list[str] = []
    t0 = time.perf_counter()

    def read() -> None:
        try:
            while (frame := wire.read_frame(read_fd)) is not None:
                frames.append(Frame(time.perf_counter() - t0, *frame))
        except wire.WireError as e:
            errors.append(str(e))
            while os.read(read_fd, 1 << 16):  # drain, so that a writer is never blocked on a full pipe
                pass
        finally:
            os.close(read_fd)

    reader = threading.Thread(target=read, daemon=True)
    try:
        proc = sandbox.start(
            argv, box, pass_fds=(write_fd,), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        os.close(write_fd)
    reader.start()
    started(proc.pid)
    status = None
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        status = "timeout"
    finally:  # a timeout, an interrupt, or any error here: no training process outlives the run
        try:
            os.killpg(proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        returncode = proc.wait()
        sandbox_s = time.perf_counter() - t0
        ended(proc.pid)
        cleanup(proc)
    reader.join(timeout=10.0)  # at the sandbox's end every writer is gone: end of file
    if reader.is_alive():
        errors.append("the evidence channel stayed open after the run ended (a process outside the sandbox holds it)")
    return TrainingRun(status, returncode, proc.pid, sandbox_s, list(frames), errors[0] if errors else None)


def evidence(run: TrainingRun) -> dict:
    """What the frames say, and what is wrong with them: the `return` frame's contents (the first one), the times
    of the frames on the runner's clock, and `problems` (each a violation) when the channel carried anything but
    one frame of each kind in order."""
    kinds = [f.header.get("kind") for f in run.frames]
    problems = []
    if run.channel_error:
        problems.append(f"the evidence channel carried bytes that are not the runner's frames ({run.channel_error})")
    if kinds != list(FRAMES) and "return" in kinds:
        problems.append(
            f"the evidence channel carried the frames {', '.join(map(str, kinds))}, not one each of "
            f"{', '.join(FRAMES)}: candidate code wrote to it"
        )
    at = {}
    for f in run.frames:
        at.setdefault(f.header.get("kind"), f)
    ret = at.get("return")
    out = {"frames": kinds, "problems": problems, "at_s": {k: f.at_s for k, f in at.items()}}
    if ret is not None:
        out["return"] = ret.header
        out["payload"] = ret.payload
        call = at.get("call")
        last = (ret.header.get("monitor") or {}).get("last_step_clock")
        if call is not None and isinstance(last, (int, float)) and isinstance(call.header.get("clock"), (int, float)):
            out["child_train_min"] = (last - call.header["clock"]) / 60.0
    return out
