"""The training child: runs inside the sandbox, imports the candidate's train_mps as the harness does and calls
train(), under global torch hooks installed before the candidate exists. What it learns is evidence, not a figure:
it goes to the runner as frames on an inherited pipe (wire.py), never through a file the candidate can reach, and
the trained model goes with it, pickled, for the scoring child to load. The runner ranks nothing this process says
about itself: the loss comes from scoring the weights in another sandbox, the time from the runner's own clock.

    python -E -s -B train_child.py FOLDER OVERRIDES_JSON EVIDENCE_FD

Frames, in order: start, import (before `import train_mps`), call (before train()), return (after it: the returned
values, the hooks' findings and the model). Standard library, numpy and torch only: the runner's package is not
in the sandbox.
"""

import dataclasses
import gc
import io
import json
import math
import os
import random
import sys
import time

try:  # as odegpt_eval.children.train_child (the runner reads its helpers) or as a script in the sandbox
    from . import wire
except ImportError:  # beside this file: python puts the script's folder first on sys.path
    import wire

HERE = os.path.dirname(os.path.abspath(__file__))

# The optimizer steps a parameter's version counter may imply beyond the run's iterations: a final load of the
# selected weights and the like (2), plus 1% of the iterations (fewer hidden steps than that buy nothing measurable).
STEPS_SLACK, STEPS_SLACK_REL = 2, 0.01


def is_token_batch(x) -> bool:
    """A (B, T) tensor of token ids: what a language model's top-level call receives."""
    import torch

    return isinstance(x, torch.Tensor) and x.dim() == 2 and x.dtype in (torch.int64, torch.int32, torch.int16)


def same_architecture(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


# Elements of each parameter whose values the monitor keeps (at random places, drawn once per parameter from a
# generator of its own, so training's random streams are untouched). An optimizer step moves nearly every element of
# a parameter (Adam's moments, weight decay), so a step shows in a sample; the full tensors cost 2 to 8 ms a step
# here (a copy and two comparisons of 0.6M to 1.7M floats), the sample about 0.5 ms.
VALUE_SAMPLE = 1024


def value_sample(p, index):
    """A copy of a parameter's sampled elements (index None: all of them), as bytes where the dtype allows, so that
    comparisons are bit for bit (a NaN equals itself)."""
    import torch

    flat = p.detach().reshape(-1)
    copy = flat.clone() if index is None else flat[index.to(flat.device)]
    try:
        return copy.view(torch.uint8)
    except RuntimeError:
        return copy


def same_values(a, b) -> bool:
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class TrainingMonitor:
    """Global torch hooks, installed before the candidate is imported, that watch what train() does.

    Model calls: the outermost module call that receives a (B, T) integer tensor as its first positional argument
    (the model, not its embedding inside it). A call in training mode with gradients on is a training forward
    (its batch shape recorded), any other an evaluation forward. Optimizer steps: every `step()` of every
    torch.optim.Optimizer (subclasses included), per optimizer. In-place updates: each parameter's version counter
    (Tensor._version, bumped by every in-place write) read before and after each counted step, so that updates
    made outside the counted steps (a second optimizer, steps taken while the hooks were paused) show, whatever
    the hooks saw. Fused optimizers (torch.optim's fused=True, the canonical's AdamW since issue #32) write their
    parameters without bumping the counter, so each parameter's values (VALUE_SAMPLE of its elements) are also kept
    as they were after the last counted step that changed them: a counted step that changes them counts once, and
    values that changed between counted steps count once more (at least one write the hooks did not see). Strong references keep the modules
    and optimizers alive after train() returns. `paused` stops recording."""

    def __init__(self, clock):
        self.clock = clock
        self.paused = False
        self.stack: list[bool] = []  # one entry per module call in progress: was it a recorded model call?
        self.inside = 0  # recorded model calls in progress
        self.modules: dict[int, dict] = {}
        self.optimizers: dict[int, dict] = {}
        self.last_eval = None  # id of the module of the latest evaluation forward
        self.handles = []
        self.versions: dict[int, dict] = {}  # id(param) -> first version seen, updates in counted steps, steps
        self.before: dict[int, list] = {}  # id(optimizer) -> versions of its parameters before the step running
        self.values: dict[int, dict] = {}  # id(param) -> sampled values after the last change, changes in/between
        self.sampler = None  # the generator of the sampled places (VALUE_SAMPLE)

    def install(self) -> None:
        import torch.nn.modules.module as mm
        import torch.optim.optimizer as om

        self.handles = [
            mm.register_module_forward_pre_hook(self.pre),
            mm.register_module_forward_hook(self.post, always_call=True),
            om.register_optimizer_step_pre_hook(self.step_pre),
            om.register_optimizer_step_post_hook(self.step),
        ]

    def pre(self, module, args):
        recorded = not self.inside and not self.paused and bool(args) and is_token_batch(args[0])
        self.stack.append(recorded)
        if recorded:
            import torch

            self.inside += 1
            entry = self.modules.get(id(module))
            if entry is None:
                entry = self.modules[id(module)] = {
                    "module": module,
                    "train": 0,
                    "eval": 0,
                    "shapes": {},
                    "eval_shapes": {},
                }
            shape = "x".join(map(str, args[0].shape))
            kind = "train" if module.training and torch.is_grad_enabled() else "eval"
            entry[kind] += 1
            shapes = entry["shapes" if kind == "train" else "eval_shapes"]
            shapes[shape] = shapes.get(shape, 0) + 1
            if kind == "eval":
                self.last_eval = id(module)

    def post(self, module, args, output):
        if self.stack and self.stack.pop():
            self.inside -= 1

    @staticmethod
    def params_of(optimizer) -> list:
        return [p for g in optimizer.param_groups for p in g["params"]]

    def step_pre(self, optimizer, args, kwargs):
        if self.paused:
            return
        params = self.params_of(optimizer)
        self.before[id(optimizer)] = [p._version for p in params]
        for p in params:
            self.versions.setdefault(id(p), {"param": p, "first": p._version, "inside": 0, "changed": 0})
            record = self.values.get(id(p))
            if record is None:
                record = self.values[id(p)] = {"index": self.sample_index(p), "last": None, "changed": 0, "between": 0}
            now = value_sample(p, record["index"])
            if record["last"] is None or not same_values(now, record["last"]):
                record["between"] += record["last"] is not None  # written since the last counted step
                record["last"] = now

    def step(self, optimizer, args, kwargs):
        if self.paused:
            return
        entry = self.optimizers.get(id(optimizer))
        if entry is None:
            entry = self.optimizers[id(optimizer)] = {"optimizer": optimizer, "steps": 0}
        entry["steps"] += 1
        entry["last_step"] = self.clock()
        before = self.before.pop(id(optimizer), None)
        if before is not None:
            for p, v in zip(self.params_of(optimizer), before):
                record = self.versions.get(id(p))
                if record is not None:
                    record["inside"] += p._version - v
                    record["changed"] += p._version > v
        for p in self.params_of(optimizer):
            record = self.values.get(id(p))
            if record is not None and record["last"] is not None:
                now = value_sample(p, record["index"])
                if not same_values(now, record["last"]):
                    record["changed"] += 1
                    record["last"] = now

    def sample_index(self, p):
        """VALUE_SAMPLE places in a parameter (None: all of it, when it has no more elements than that)."""
        import torch

        n = p.numel()
        if n <= VALUE_SAMPLE:
            return None
        if self.sampler is None:
            self.sampler = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        return torch.randint(n, (VALUE_SAMPLE,), generator=self.sampler).to(p.device)

    def updates(self, model) -> dict:
        """What the version counters and the values say of the trained model's parameters, whatever the hooks saw of
        the steps. Versions: per parameter, its in-place writes since its first counted step, and the optimizer steps
        they imply (all writes / the writes of one counted step that changed it). Values (basis `values`): the
        counted steps that changed it plus the times it changed between counted steps. The entry implying the most
        steps is kept."""
        worst = None
        for name, p in model.named_parameters():
            entries = []
            record = self.versions.get(id(p))
            if record is not None and record["changed"]:  # else no counted step bumped it (frozen, fused, no grad)
                per_step = record["inside"] / record["changed"]
                total = p._version - record["first"]
                entries.append(
                    {
                        "param": name,
                        "writes": total,
                        "writes_per_step": per_step,
                        "counted_steps": record["changed"],
                        "steps_lower_bound": int(total / per_step + 1e-9),
                    }
                )
            values = self.values.get(id(p))
            if values is not None and values["changed"] + values["between"]:
                entries.append(
                    {
                        "param": name,
                        "basis": "values",
                        "counted_steps": values["changed"],
                        "changed_between_steps": values["between"],
                        "steps_lower_bound": values["changed"] + values["between"],
                    }
                )
            for entry in entries:
                if worst is None or entry["steps_lower_bound"] > worst["steps_lower_bound"]:
                    worst = entry
        return {"worst": worst, "slack": [STEPS_SLACK, STEPS_SLACK_REL]}

    def other_trained(self, keep, steps: int) -> dict:
        """Parameters written in place more often than initialisation does (4) plus half the run's steps, that
        belong to neither the trained nor the scored model (a shadow model trained out of the hooks' sight): found
        in the garbage collector's list, so only those still alive when train() returns."""
        import torch

        mine = {id(p) for m in keep for p in m.parameters()}
        found, top = 0, 0
        for obj in gc.get_objects():
            if isinstance(obj, torch.nn.Parameter) and id(obj) not in mine and obj._version > 4 + steps // 2:
                found += 1
                top = max(top, obj._version)
        return {"parameters": found, "max_updates": top}

    def findings(self) -> dict:
        """The trained model, the model to score (the last evaluated one if it is a copy of the trained one, as
        an EMA; else the trained one), the optimizer steps of the trained model's main optimizer, the shapes, and
        what the version counters say."""
        trained = max(self.modules.values(), key=lambda e: e["train"], default=None)
        if trained is None or trained["train"] == 0:
            return {"model_found": False, "modules": self.describe_modules()}
        scored, scored_as = trained, "trained"
        last = self.modules.get(self.last_eval)
        if last is not None and last is not trained:
            if same_architecture(last["module"], trained["module"]):
                scored, scored_as = last, "evaluated copy"
            else:
                scored_as = "trained (the last evaluated module is another architecture)"
        owned = {id(p): p.numel() for p in trained["module"].parameters()}
        steps, main, last_step = 0, None, None
        for i, o in enumerate(self.optimizers.values()):
            share = sum(owned.get(id(p), 0) for p in self.params_of(o["optimizer"]))
            if share and (main is None or share > main[0]):
                main, steps, last_step = (share, i), o["steps"], o.get("last_step")
        return {
            "model_found": True,
            "model": scored["module"],
            "scored_module": scored_as,
            "model_class": type(scored["module"]).__qualname__,
            "optimizer_steps": steps,
            "main_optimizer": None if main is None else main[1],
            "last_step_clock": last_step,
            "training_forwards": trained["train"],
            "training_batch_shapes": dict(trained["shapes"]),
            "modules_trained": sum(e["train"] > 0 for e in self.modules.values()),
            "modules": self.describe_modules(),
            "optimizers": [
                {"class": type(o["optimizer"]).__qualname__, "steps": o["steps"]} for o in self.optimizers.values()
            ],
            "updates": self.updates(trained["module"]),
            "other_trained": self.other_trained([trained["module"], scored["module"]], steps),
        }

    def describe_modules(self) -> list:
        return [
            {
                "class": type(e["module"]).__qualname__,
                "train": e["train"],
                "eval": e["eval"],
                "train_shapes": e["shapes"],
                "eval_shapes": e["eval_shapes"],
            }
            for e in self.modules.values()
        ]


def returned_value(v) -> dict:
    """One returned value as the record keeps it: its exact type and, for floats (subclasses too), the plain value
    (non-finite values as strings, so the JSON stays strict)."""
    value = float.__float__(v) if isinstance(v, float) else None
    torch = sys.modules.get("torch")
    if torch is not None and type(v) is torch.Tensor and v.numel() == 1 and v.is_floating_point():
        value = float(v.detach().cpu().item())  # the original's best_vloss (judged by layout, judge_run)
    if value is not None and not math.isfinite(value):
        value = str(value)
    return {"type": f"{type(v).__module__}.{type(v).__qualname__}", "value": value}


def export_model(model) -> tuple[dict, bytes]:
    """The scored model as the scoring child loads it: the module object pickled by torch.save (its class found by
    module name in the candidate's model.py), on the CPU unless it trained on CUDA."""
    import inspect

    import torch

    cls = type(model)
    try:
        source = inspect.getsourcefile(cls)
    except (TypeError, OSError):
        source = None
    param = next(iter(model.parameters()), None)
    info = {"module": cls.__module__, "class": cls.__qualname__, "file": source}
    info["device"] = "cuda" if param is not None and param.device.type == "cuda" else "cpu"
    buf = io.BytesIO()
    torch.save(model if info["device"] == "cuda" else model.cpu(), buf)
    return info, buf.getvalue()


def main(argv: list[str]) -> int:
    clock = time.perf_counter  # bound before the candidate exists: patching time.* later cannot reach it
    folder, overrides, fd = argv[0], json.loads(argv[1]), int(argv[2])
    wire.write_frame(fd, {"kind": "start", "clock": clock()})
    import numpy as np
    import torch

    seed = int(os.environ.get("TRAIN_MPS_SEED", "0"))  # for candidates that set no seed (odegpt's train() re-seeds)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    monitor = TrainingMonitor(clock)
    monitor.install()
    # as the harness: the candidate's folder first, and this file's folder gone
    sys.path[:] = [folder] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    wire.write_frame(fd, {"kind": "import", "clock": clock()})
    import train_mps

    wire.write_frame(fd, {"kind": "call", "clock": clock()})
    if overrides is None:
        result = train_mps.train()
    elif set(overrides) <= {f.name for f in dataclasses.fields(train_mps.Recipe)}:
        result = train_mps.train(train_mps.Recipe(**overrides))
    else:  # a built-in that sets a lever: levers.py beside train_mps (the run's folder leads sys.path)
        import levers

        result = levers.train(levers.LeverRecipe(**overrides))
    t_return = clock()
    monitor.paused = True
    found = monitor.findings()
    model = found.pop("model", None)
    pair = type(result) is tuple and len(result) == 2
    header = {
        "kind": "return",
        "clock": t_return,
        "returned": [returned_value(v) for v in result] if pair else None,
        "returned_repr": repr(result)[:500],
        "module_file": getattr(train_mps, "__file__", None),
        "monitor": found,
    }
    payload = b""
    if model is not None:
        try:
            header["model"], payload = export_model(model)
        except Exception as e:  # an unpicklable model is a finding, not a crash
            header["export_error"] = f"{type(e).__name__}: {e}"
    wire.write_frame(fd, header, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
