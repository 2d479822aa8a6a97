"""Red-team attacks on scripts/check_constraints.py: each cheat is a small textual edit of today's train_mps.py
(read at test time) or of the DreamTeam original layout below, and must be rejected under its rule id.

Every edit names an anchor that must exist in the file it edits (asserted, so a change of the file fails the
test loudly instead of testing an unedited file). Families follow issue #15: fixed-name aliases, dynamic code
and builtins, environment writes, the training loop, data, results and the clock, model.py.
"""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import load_checker
from dreamteam_harness import ORIGINAL_LAYOUT

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_constraints.py"


cc = load_checker("check_constraints_attacks")

ORIGINAL = ORIGINAL_LAYOUT  # the DreamTeam original layout (tests/dreamteam_harness.py)


@dataclass(frozen=True)
class Edit:
    """Replace `anchor` (mode "replace"), or insert `text` on a new line after / before the anchor's line."""

    anchor: str
    text: str
    mode: str = "replace"

    def apply(self, source: str) -> str:
        assert self.anchor in source, f"anchor {self.anchor!r} is gone: the file changed; update this attack"
        i = source.index(self.anchor)
        if self.mode == "replace":
            return source.replace(self.anchor, self.text, 1)
        j = source.index("\n", i) + 1 if self.mode == "after" else source.rindex("\n", 0, i) + 1
        return source[:j] + self.text + source[j:]


def lines(indent: int, *code: str) -> str:
    return "".join(" " * indent + line + "\n" for line in code)


# Anchors in each layout: where module-level code, the top of train, the loop body and the lines after the loop go.
OURS_ANCHORS = {
    "module": Edit("# --- end of fixed block ---\n", "", "after"),
    "top": Edit("    t0 = time.time()", "", "after"),
    "loop": Edit("xb, yb = get_batch(train_data, train_gen)", "", "after"),
    "after_loop": Edit("    elapsed_min = (time.time() - t0) / 60.0", "", "before"),
}
ORIG_ANCHORS = {
    "module": Edit("import time\n\n\ndef train():", "", "before"),
    "top": Edit("    max_iters = 10001\n", "", "after"),
    "loop": Edit("X, Y = get_batch('train')", "", "after"),
    "after_loop": Edit("    elapsed_min = (time.time() - t_start) / 60\n", "", "before"),
}


def at(where: str, *code: str):
    """An insertion of `code` at `where` (module / top / loop / after_loop), resolved per layout."""
    return ("at", where, code)


@dataclass(frozen=True)
class Attack:
    id: str
    rule: str
    ours: tuple = ()  # edits of today's train_mps.py (Edit or at(...)); empty: not applicable
    orig: tuple = ()  # edits of the original layout


def resolve(edit, layout: str) -> Edit:
    if isinstance(edit, Edit):
        return edit
    _, where, code = edit
    anchor = (OURS_ANCHORS if layout == "ours" else ORIG_ANCHORS)[where]
    indent = {"module": 0, "top": 4, "loop": 8, "after_loop": 4}[where]
    return Edit(anchor.anchor, lines(indent, *code), anchor.mode)


def both(*edits):
    return {"ours": edits, "orig": edits}


def A(id, rule, ours=(), orig=(), both_=()):  # noqa: N802 - a table constructor
    return Attack(id, rule, tuple(ours) or tuple(both_), tuple(orig) or tuple(both_))


# --- 1. fixed names through aliases -------------------------------------------------------------------------
FIXED = [
    A("globals-alias", "fixed-block", both_=[at("top", "_g = globals()", "_g['batch_size'] = 16")]),
    A("globals-update", "fixed-block", both_=[at("top", "globals().update(batch_size=16)")]),
    A("vars-subscript", "fixed-block", both_=[at("top", "vars()['max_iters'] = 500")]),
    A("locals-in-train", "fixed-block", both_=[at("top", "locals()['batch_size'] = 16")]),
    A("locals-alias-update", "fixed-block", both_=[at("top", "_l = locals()", "_l.update({'max_iters': 5})")]),
    A(
        "setattr-sys-modules",
        "fixed-block",
        both_=[at("top", "import sys", "setattr(sys.modules[__name__], 'max_iters', 500)")],
    ),
    A("self-import", "fixed-block", both_=[at("top", "import train_mps as me", "me.max_iters = 5")]),
    A("sys-modules-attr", "fixed-block", both_=[at("top", "import sys", "sys.modules[__name__].max_iters = 5")]),
    A(
        "sys-modules-alias",
        "fixed-block",
        both_=[at("top", "import sys", "_m = sys.modules.get(__name__)", "_m.n_layer = 2")],
    ),
    A(
        "import-module-alias",
        "fixed-block",
        both_=[at("top", "import importlib", "_m = importlib.import_module('train_mps')", "_m.n_embd = 16")],
    ),
    A(
        "computed-setattr",
        "fixed-block",
        both_=[at("top", "import sys", "mod = sys.modules[__name__]", "setattr(mod, 'max_' + 'iters', 5)")],
    ),
    A(
        "fstring-setattr",
        "fixed-block",
        both_=[at("top", "import sys", "setattr(sys.modules[__name__], f\"{'max'}_iters\", 5)")],
    ),
    A(
        "constant-name-key",
        "fixed-block",
        both_=[at("module", "_KEY = 'batch' + '_size'"), at("top", "globals()[_KEY] = 16")],
    ),
    A("join-key", "fixed-block", both_=[at("top", "globals()[''.join(['max', '_iters'])] = 5")]),
    A("dunder-globals", "fixed-block", both_=[at("top", "train.__globals__['max_iters'] = 5")]),
    A("module-dict", "fixed-block", both_=[at("top", "import sys", "vars(sys.modules[__name__])['n_head'] = 2")]),
    A(
        "object-setattr",
        "fixed-block",
        both_=[at("top", "import sys", "object.__setattr__(sys.modules[__name__], 'max_iters', 5)")],
    ),
    A("del", "fixed-block", both_=[at("top", "del max_iters")]),
    A("augassign", "fixed-block", both_=[at("top", "max_iters //= 20")]),
    A("ctx-rebound", "fixed-block", both_=[at("top", "ctx = torch.autocast('cpu', dtype=torch.bfloat16)")]),
    A("device-rebound", "fixed-block", both_=[at("top", "device = 'cpu'")]),
    A(
        "value-changed",
        "fixed-block",
        ours=[Edit("\nbatch_size = 8\n", "\nbatch_size = 16\n")],
        orig=[Edit("    batch_size = 8\n", "    batch_size = 16\n")],
    ),
    A("orig-device-cpu", "fixed-block", orig=[Edit("    device = 'mps'\n", "    device = 'cpu'\n")]),
    A("orig-local-missing", "fixed-block", orig=[Edit("    n_layer = 4\n", "")]),
    A("module-level-rebind", "fixed-block", both_=[at("module", "max_iters = 500")]),
]

# --- 2. dynamic code and builtins -------------------------------------------------------------------------
DYNAMIC = [
    A("exec", "no-dynamic-code", both_=[at("top", "exec('max_iters = 5')")]),
    A("eval", "no-dynamic-code", both_=[at("top", "_n = eval('5')")]),
    A("compile", "no-dynamic-code", both_=[at("top", "_c = compile('x = 1', 'x', 'exec')")]),
    A("dunder-import", "no-dynamic-code", both_=[at("top", "_os = __import__('os')")]),
    A("exec-alias", "no-dynamic-code", both_=[at("module", "_run = exec")]),
    A("getattr-exec", "no-dynamic-code", both_=[at("top", "import math", "getattr(math, 'ex' + 'ec')")]),
    A(
        "computed-import",
        "no-dynamic-code",
        both_=[at("top", "import importlib", "importlib.import_module(os.environ['MOD'])")],
    ),
    A("runpy", "no-dynamic-code", both_=[at("top", "import runpy", "runpy.run_path('/tmp/x.py')")]),
    A("code-type", "no-dynamic-code", both_=[at("top", "import types", "_f = types.FunctionType")]),
    A("builtins-range", "no-builtins-patch", both_=[at("module", "import builtins", "builtins.range = lambda n: [0]")]),
    A("dunder-builtins", "no-builtins-patch", both_=[at("module", "__builtins__['len'] = lambda x: 1")]),
    A("shadow-range-module", "no-builtins-patch", both_=[at("module", "def range(n):", "    return iter([0])")]),
    A("shadow-range-train", "no-builtins-patch", both_=[at("top", "range = lambda n: [0] * 10")]),
    A("shadow-len", "no-builtins-patch", both_=[at("top", "len = lambda x: 1")]),
    A("shadow-min", "no-builtins-patch", both_=[at("module", "min = max")]),
    A("shadow-float", "no-builtins-patch", both_=[at("top", "float = lambda x: 0.0")]),
]

# --- 3. environment writes ------------------------------------------------------------------------------------
ENV = [
    A("setitem", "no-env-write", both_=[at("top", "os.environ['TRAIN_MPS_MAX_ITERS'] = '5'")]),
    A("update", "no-env-write", both_=[at("top", "os.environ.update(TRAIN_MPS_MAX_ITERS='5')")]),
    A("setdefault", "no-env-write", both_=[at("top", "os.environ.setdefault('TRAIN_MPS_MAX_ITERS', '5')")]),
    A("pop", "no-env-write", both_=[at("top", "os.environ.pop('TRAIN_MPS_DATA_DIR', None)")]),
    A("clear", "no-env-write", both_=[at("top", "os.environ.clear()")]),
    A("dunder-setitem", "no-env-write", both_=[at("top", "os.environ.__setitem__('TRAIN_MPS_SEED', '3')")]),
    A("from-import-alias", "no-env-write", both_=[at("top", "from os import environ as E", "E['X'] = '1'")]),
    A("putenv", "no-env-write", both_=[at("top", "os.putenv('TRAIN_MPS_MAX_ITERS', '5')")]),
    A("unsetenv", "no-env-write", both_=[at("top", "os.unsetenv('TRAIN_MPS_SEED')")]),
    A("from-import-putenv", "no-env-write", both_=[at("top", "from os import putenv as _p", "_p('X', '1')")]),
    A("del", "no-env-write", both_=[at("top", "del os.environ['HOME']")]),
    A("annotated-alias", "no-env-write", both_=[at("top", "env: dict = os.environ", "env['X'] = '1'")]),
    A("getattr-environ", "no-env-write", both_=[at("top", "getattr(os, 'environ')['X'] = '1'")]),
]

# --- 4. the training loop ---------------------------------------------------------------------------------------
OURS_LOOP = "    for it in range(n_iters):\n"
ORIG_LOOP = "    for it in range(max_iters):\n"
OURS_GATE = "        if it % eval_interval == 0:\n"
ORIG_GATE = "        if it % 100 == 0:\n"


def loop_header(new_ours: str, new_orig: str) -> dict:
    return {
        "ours": [Edit(OURS_LOOP, f"    for it in {new_ours}:\n")],
        "orig": [Edit(ORIG_LOOP, f"    for it in {new_orig}:\n")],
    }


def gate(new_ours: str, new_orig: str) -> dict:
    return {"ours": [Edit(OURS_GATE, f"        {new_ours}\n")], "orig": [Edit(ORIG_GATE, f"        {new_orig}\n")]}


def L(id, rule, table):  # noqa: N802
    return Attack(id, rule, tuple(table["ours"]), tuple(table["orig"]))


LOOP = [
    L("bound-div20", "training-loop", loop_header("range(n_iters // 20)", "range(max_iters // 20)")),
    L("bound-500", "training-loop", loop_header("range(500)", "range(500)")),
    L("bound-minus-1", "training-loop", loop_header("range(max_iters - 1)", "range(max_iters - 1)")),
    L("bound-step-2", "training-loop", loop_header("range(0, n_iters, 2)", "range(0, max_iters, 2)")),
    L("bound-start-1", "training-loop", loop_header("range(1, n_iters)", "range(1, max_iters)")),
    L("islice", "training-loop", loop_header("islice(range(n_iters), 500)", "islice(range(max_iters), 500)")),
    A(
        "n_iters-divided",
        "training-loop",
        ours=[Edit("n_iters = iters_from_env()", "n_iters = iters_from_env() // 20")],
    ),
    A("n_iters-constant", "training-loop", ours=[Edit("n_iters = iters_from_env()", "n_iters = 500")]),
    A(
        "n_iters-env-default",
        "training-loop",
        ours=[Edit("n_iters = iters_from_env()", "n_iters = int(os.environ.get('TRAIN_MPS_MAX_ITERS', '500'))")],
    ),
    A(
        "n_iters-capped",
        "training-loop",
        ours=[Edit("n_iters = iters_from_env()\n", "n_iters = iters_from_env()\n    n_iters = min(n_iters, 500)\n")],
    ),
    A("helper-scaled", "training-loop", ours=[Edit("        return max_iters\n", "        return max_iters // 20\n")]),
    A(
        "shadowed-range",
        "no-builtins-patch",
        both_=[at("top", "range = lambda n: iter(list(__builtins__['range'](n))[:500])")],
    ),
    A("break", "training-loop", both_=[at("loop", "if it == 500:", "    break")]),
    A("return-in-loop", "training-loop", both_=[at("loop", "if it == 500:", "    return best_vloss, elapsed_min")]),
    A("continue", "training-loop", both_=[at("loop", "if it > 500:", "    continue")]),
    A("step-rebound", "training-loop", both_=[at("loop", "it += 1")]),
    A(
        "grad-accumulation",
        "training-loop",
        ours=[at("loop", "for _ in range(3):", "    train_step(model, optimizers, params, xb, yb, r)")],
        orig=[at("loop", "for _ in range(3):", "    model(X, Y)[1].backward()")],
    ),
    A(
        "second-loop",
        "training-loop",
        ours=[
            Edit(
                OURS_LOOP,
                "    for _it in range(n_iters):\n        train_step(model, optimizers, params, *get_batch(train_data, train_gen), r)\n"
                + OURS_LOOP,
            )
        ],
        orig=[
            Edit(
                ORIG_LOOP,
                "    for _it in range(max_iters):\n        model(*get_batch('train'))[1].backward()\n" + ORIG_LOOP,
            )
        ],
    ),
    L("gate-false", "eval-interval", gate("if False:", "if False:")),
    L("gate-and-false", "eval-interval", gate("if it % eval_interval == 0 and False:", "if it % 100 == 0 and False:")),
    L(
        "gate-in-if-0",
        "eval-interval",
        gate("if 0:\n         if it % eval_interval == 0:", "if 0:\n         if it % 100 == 0:"),
    ),
    L("gate-mod-50", "eval-interval", gate("if it % 50 == 0:", "if it % 50 == 0:")),
    L("gate-mod-1", "eval-interval", gate("if it % 1 == 0:", "if it % 1 == 0:")),
    L("gate-or-true", "eval-interval", gate("if it % eval_interval == 0 or True:", "if it % 100 == 0 or True:")),
    L("gate-or-range", "eval-interval", gate("if it % eval_interval == 0 or it >= 0:", "if it % 100 == 0 or it > -1:")),
    L(
        "gate-other-step",
        "eval-interval",
        gate("if (it * 2) % eval_interval == 0 or step % eval_interval == 0:", "if step % 100 == 0:"),
    ),
    A(
        "train-calls-train",
        "no-seed-fishing",
        both_=[at("top", "if not os.environ.get('INNER'):", "    runs = [train() for _ in range(3)]")],
    ),
    A("seed-loop", "no-seed-fishing", both_=[at("top", "for _s in range(5):", "    torch.manual_seed(_s)")]),
    A(
        "train-at-import",
        "no-seed-fishing",
        both_=[Edit('if __name__ == "__main__":', '_BEST = [train() for _ in range(2)]\nif __name__ == "__main__":')],
    ),
    A(
        "randint-quarter",
        "full-batch",
        ours=[Edit("(batch_size,), generator=generator", "(batch_size // 4,), generator=generator")],
        orig=[Edit("(batch_size,), device=device", "(batch_size // 4,), device=device")],
    ),
    A(
        "randint-2",
        "full-batch",
        ours=[Edit("(batch_size,), generator=generator", "(2,), generator=generator")],
        orig=[Edit("(batch_size,), device=device", "(2,), device=device")],
    ),
    A("slice-2", "full-batch", ours=[at("loop", "xb, yb = xb[:2], yb[:2]")], orig=[at("loop", "X, Y = X[:2], Y[:2]")]),
    A(
        "slice-step",
        "full-batch",
        ours=[at("loop", "xb, yb = xb[::2], yb[::2]")],
        orig=[at("loop", "X, Y = X[::2], Y[::2]")],
    ),
    A(
        "block-half",
        "full-batch",
        ours=[Edit("torch.arange(block_size)[None, :]", "torch.arange(block_size // 2)[None, :]")],
        orig=[Edit("data[i:i + block_size]", "data[i:i + block_size // 2]")],
    ),
]

# --- 5. data: the training split, warm starts -------------------------------------------------------------------
OURS_TRAIN_SPLIT = 'train_np = load_split(data_dir, "train", r.vocab_size)'
ORIG_TRAIN_FILE = "'data/shakespeare/train.bin'"
DATA = [
    A(
        "split-val",
        "train-split",
        ours=[Edit(OURS_TRAIN_SPLIT, 'train_np = load_split(data_dir, "val", r.vocab_size)')],
        orig=[Edit(ORIG_TRAIN_FILE, "'data/shakespeare/val.bin'")],
    ),
    A(
        "split-folded",
        "train-split",
        ours=[Edit(OURS_TRAIN_SPLIT, 'train_np = load_split(data_dir, "va" + "l", r.vocab_size)')],
        orig=[Edit(ORIG_TRAIN_FILE, '"data/shakespeare/" + "va" + "l" + ".bin"')],
    ),
    A(
        "split-fstring",
        "train-split",
        ours=[Edit(OURS_TRAIN_SPLIT, "train_np = load_split(data_dir, f\"{'va'}l\", r.vocab_size)")],
        orig=[Edit(ORIG_TRAIN_FILE, "f\"data/shakespeare/{'val'}.bin\"")],
    ),
    A(
        "split-const-name",
        "train-split",
        ours=[
            at("module", "_SPLIT = 'va' + 'l'"),
            Edit(OURS_TRAIN_SPLIT, "train_np = load_split(data_dir, _SPLIT, r.vocab_size)"),
        ],
        orig=[at("module", "_SPLIT = 'va' + 'l'"), Edit("X, Y = get_batch('train')", "X, Y = get_batch(_SPLIT)")],
    ),
    A(
        "batch-from-val",
        "train-split",
        ours=[Edit("get_batch(train_data, train_gen)", "get_batch(val_data, train_gen)")],
        orig=[Edit("X, Y = get_batch('train')", "X, Y = get_batch('val')")],
    ),
    A("orig-batch-folded", "train-split", orig=[Edit("X, Y = get_batch('train')", "X, Y = get_batch('va' + 'l')")]),
    A(
        "orig-sampler-swap",
        "train-split",
        orig=[
            Edit(
                "data = train_data if split == 'train' else val_data",
                "data = val_data if split == 'train' else train_data",
            )
        ],
    ),
    A(
        "concat",
        "train-split",
        ours=[
            Edit(
                "    val_data = torch.from_numpy(val_np",
                "    train_data = torch.cat([train_data, torch.from_numpy(val_np.astype(np.int64)).to(dev)])\n    val_data = torch.from_numpy(val_np",
            )
        ],
        orig=[
            Edit(
                "    # not to be changed\n    device = 'mps'",
                "    train_data = torch.cat([train_data, val_data])\n    device = 'mps'",
            )
        ],
    ),
    A(
        "val-in-loop",
        "train-split",
        ours=[at("loop", "train_step(model, optimizers, params, *get_batch(val_data, train_gen), r)")],
        orig=[at("loop", "model(*get_batch('val'))[1].backward()")],
    ),
    A(
        "torch-load",
        "no-warm-start",
        both_=[
            at("after_loop", "pass"),
            Edit("    best_vloss = ", "    model.load_state_dict(torch.load('out/ckpt.pt'))\n    best_vloss = "),
        ],
    ),
    A(
        "pickle-load",
        "no-warm-start",
        both_=[
            Edit(
                "    best_vloss = ",
                "    import pickle\n    _state = pickle.load(open('out/state.pkl', 'rb'))\n    best_vloss = ",
            )
        ],
    ),
    A(
        "from-pretrained",
        "no-warm-start",
        both_=[Edit("    best_vloss = ", "    model = GPT.from_pretrained('gpt2')\n    best_vloss = ")],
    ),
    A(
        "load-in-helper",
        "no-warm-start",
        both_=[
            at("module", "def _warm(m):", "    m.load_state_dict(torch.load('out/ckpt.pt'))"),
            Edit("    best_vloss = ", "    _warm(model)\n    best_vloss = "),
        ],
    ),
]

# --- 6. results and the clock ----------------------------------------------------------------------------------
OURS_UPDATE = "best_vloss = min(best_vloss, vloss)"
ORIG_UPDATE = "                best_vloss = vloss\n"
RESULTS = [
    A(
        "scaled-update",
        "honest-results",
        ours=[Edit(OURS_UPDATE, "best_vloss = min(best_vloss, vloss * 0.9)")],
        orig=[Edit(ORIG_UPDATE, "                best_vloss = vloss * 0.9\n")],
    ),
    A(
        "offset-update",
        "honest-results",
        ours=[Edit(OURS_UPDATE, "best_vloss = min(best_vloss, vloss - 0.5)")],
        orig=[Edit(ORIG_UPDATE, "                best_vloss = vloss - 0.5\n")],
    ),
    A(
        "offset-upstream",
        "honest-results",
        ours=[Edit("vloss = vloss_t.item()", "vloss = vloss_t.item() - 0.5")],
        orig=[Edit("_, vloss = model(Xv, Yv)", "_, vloss = model(Xv, Yv)\n                vloss = vloss * 0.9")],
    ),
    A("replaced-after-loop", "honest-results", both_=[at("after_loop", "best_vloss = best_vloss * 0.9")]),
    A("constant-after-loop", "honest-results", both_=[at("after_loop", "best_vloss = 3.0")]),
    A("constant-return", "train-return", both_=[Edit("    return best_vloss, elapsed_min\n", "    return 3.0, 1.0\n")]),
    A(
        "scaled-return",
        "train-return",
        both_=[Edit("    return best_vloss, elapsed_min\n", "    return best_vloss * 0.9, elapsed_min\n")],
    ),
    A(
        "low-start",
        "honest-results",
        ours=[Edit('best_vloss = float("inf")', "best_vloss = 1.0")],
        orig=[Edit("best_vloss = np.inf", "best_vloss = 2.5")],
    ),
    A(
        "outside-gate",
        "honest-results",
        ours=[at("loop", "best_vloss = min(best_vloss, loss.item())")],
        orig=[at("loop", "best_vloss = min(best_vloss, loss.item())")],
    ),
    A(
        "float-subclass",
        "honest-results",
        both_=[at("module", "class _Loss(float):", "    def __lt__(self, other):", "        return True")],
    ),
    A("type-subclass", "honest-results", both_=[at("module", "_Loss = type('_Loss', (float,), {})")]),
    A(
        "clock-reset",
        "honest-results",
        ours=[at("after_loop", "t0 = time.time()")],
        orig=[at("after_loop", "t_start = time.time()")],
    ),
    A(
        "elapsed-other-clock",
        "honest-results",
        ours=[Edit("elapsed_min = (time.time() - t0) / 60.0", "elapsed_min = (time.time() - t_last) / 60.0")],
        orig=[
            Edit("elapsed_min = (time.time() - t_start) / 60\n", "elapsed_min = (time.perf_counter() - t_start) / 60\n")
        ],
    ),
    A(
        "elapsed-halved",
        "honest-results",
        ours=[Edit("elapsed_min = (time.time() - t0) / 60.0", "elapsed_min = (time.time() - t0) / 120.0")],
        orig=[Edit("elapsed_min = (time.time() - t_start) / 60\n", "elapsed_min = (time.time() - t_start) / 60 / 2\n")],
    ),
    A(
        "elapsed-constant",
        "honest-results",
        ours=[Edit("elapsed_min = (time.time() - t0) / 60.0", "elapsed_min = 0.5")],
        orig=[Edit("elapsed_min = (time.time() - t_start) / 60\n", "elapsed_min = 0.5\n")],
    ),
    A(
        "elapsed-updated",
        "honest-results",
        both_=[
            Edit("    return best_vloss, elapsed_min\n", "    elapsed_min -= 1.0\n    return best_vloss, elapsed_min\n")
        ],
    ),
    A(
        "clock-not-first",
        "honest-results",
        ours=[Edit("    t0 = time.time()", "    data_dir = find_data_dir()\n    t0 = time.time()")],
        orig=[Edit("    t_start = time.time()", "    _ = np.zeros(1)\n    t_start = time.time()")],
    ),
    A("time-patched", "no-clock-patch", both_=[at("module", "time.time = lambda: 0.0")]),
    A("perf-counter-patched", "no-clock-patch", both_=[at("module", "time.perf_counter = lambda: 0.0")]),
    A("time-alias-patched", "no-clock-patch", both_=[at("module", "import time as _t", "_t.time = lambda: 0.0")]),
    A("setattr-time", "no-clock-patch", both_=[at("top", "setattr(time, 'time', lambda: 0.0)")]),
    A(
        "from-time-rebound",
        "no-clock-patch",
        both_=[at("module", "from time import time as _now", "_now = lambda: 0.0")],
    ),
    A("time-shadowed", "no-clock-patch", both_=[at("module", "class time:", "    time = staticmethod(lambda: 0.0)")]),
    A("mock-patch", "no-clock-patch", both_=[at("module", "from unittest import mock")]),
    A("seed-patched", "no-seed-patch", both_=[at("module", "torch.manual_seed = lambda *a: None")]),
]

TRAIN_ATTACKS = [
    ("fixed", FIXED),
    ("dynamic", DYNAMIC),
    ("env", ENV),
    ("loop", LOOP),
    ("data", DATA),
    ("results", RESULTS),
]
CASES = [
    pytest.param(attack, layout, id=f"{family}-{attack.id}-{layout}")
    for family, attacks in TRAIN_ATTACKS
    for attack in attacks
    for layout in ("ours", "orig")
    if (attack.ours if layout == "ours" else attack.orig)
]


def today() -> str:
    return (ROOT / "train_mps.py").read_text(encoding="utf-8")


def edited(base: str, edits, layout: str) -> str:
    source = base
    for edit in edits:
        new = resolve(edit, layout).apply(source)
        assert new != source, f"{edit} changed nothing"
        source = new
    return source


@pytest.mark.parametrize(("attack", "layout"), CASES)
def test_attack_is_rejected_by_its_rule(attack: Attack, layout: str):
    base = today() if layout == "ours" else ORIGINAL
    source = edited(base, attack.ours if layout == "ours" else attack.orig, layout)
    compile(source, "train_mps.py", "exec")  # the cheat is valid Python: the checker, not the parser, rejects it
    violations = cc.check(source)
    assert attack.rule in {v.rule for v in violations}, violations
    assert all(v.message for v in violations)


# --- 7. model.py ----------------------------------------------------------------------------------------------
MODEL_ANCHOR = "import math\n"  # model.py's first module-level import after its header
MODEL_ATTACKS = [
    ("time-patched", "no-clock-patch", ["import time", "time.time = lambda: 0.0"]),
    ("perf-counter", "no-clock-patch", ["import time as _t", "_t.perf_counter = lambda: 0.0"]),
    ("builtins", "no-builtins-patch", ["import builtins", "builtins.range = lambda n: [0]"]),
    ("dunder-builtins", "no-builtins-patch", ["__builtins__['min'] = max"]),
    ("env-write", "no-env-write", ["import os", "os.environ['TRAIN_MPS_MAX_ITERS'] = '5'"]),
    ("env-alias", "no-env-write", ["from os import environ as _E", "_E.update(TRAIN_MPS_MAX_ITERS='5')"]),
    ("manual-seed", "no-seed-patch", ["import torch", "torch.manual_seed = lambda *a: None"]),
    ("random-seed", "no-seed-patch", ["import random", "random.seed = lambda *a: None"]),
    ("numpy-seed", "no-seed-patch", ["import numpy as np", "np.random.seed = lambda *a: None"]),
    ("sys-modules", "no-harness-patch", ["import sys", "sys.modules['train_mps'].max_iters = 5"]),
    ("import-train-mps", "no-harness-patch", ["import train_mps", "train_mps.max_iters = 5"]),
    ("frame-walk", "no-harness-patch", ["inspect.currentframe().f_back.f_globals['max_iters'] = 5"]),
    ("exec", "no-dynamic-code", ["exec('import os')"]),
    ("eval", "no-dynamic-code", ["_x = eval('1')"]),
    ("torch-load", "no-warm-start", ["import torch", "_W = torch.load('out/ckpt.pt')"]),
]


def today_model() -> str:
    return (ROOT / "model.py").read_text(encoding="utf-8")


@pytest.mark.parametrize(("code", "rule"), [pytest.param(c, r, id=i) for i, r, c in MODEL_ATTACKS])
def test_model_attack_is_rejected_by_its_rule(code: list, rule: str):
    source = Edit(MODEL_ANCHOR, lines(0, *code), "after").apply(today_model())
    compile(source, "model.py", "exec")
    assert rule in {v.rule for v in cc.check_model(source)}, cc.check_model(source)


# --- what must pass -------------------------------------------------------------------------------------------


def test_todays_files_pass():
    assert cc.check(today(), "train_mps.py") == []
    assert cc.check_model(today_model(), "model.py") == []


def test_original_layout_passes():
    assert cc.check(ORIGINAL, "train_mps.py") == []


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(Edit(ORIG_GATE, "        if it % eval_interval == 0:\n"), id="eval_interval-local"),
        pytest.param(
            Edit("    return best_vloss, elapsed_min\n", "    return float(best_vloss), elapsed_min\n"), id="float"
        ),
        pytest.param(Edit(ORIG_UPDATE, "                best_vloss = vloss.item()\n"), id="item"),
        pytest.param(Edit(ORIG_GATE, "        if it % 100 == 0 or it == max_iters - 1:\n"), id="gate-or-last"),
        pytest.param(Edit("    learning_rate = 3e-4\n", "    learning_rate = 1e-3\n"), id="lr"),
    ],
)
def test_original_layout_legitimate_edits_pass(edit: Edit):
    source = edit.apply(ORIGINAL)
    if "eval_interval" in source and "eval_interval = " not in source:
        source = Edit("    max_iters = 10001\n", "    max_iters = 10001\n    eval_interval = 100\n").apply(source)
    assert cc.check(source) == []


def test_neither_layout_names_both():
    source = ORIGINAL
    for name in ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "max_iters"):
        source = source.replace(f"    {name} = ", f"    _{name} = ")
    source = source.replace("    device = 'mps'", "    _device = 'mps'").replace(
        "    ctx = nullcontext()", "    _ctx = 0"
    )
    messages = [v.message for v in cc.check(source) if v.rule == "fixed-block"]
    assert any("module-level" in m and "top of train()" in m for m in messages), messages


# --- command line ---------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_cli_folder_and_files(tmp_path):
    original = tmp_path / "original"
    original.mkdir()
    (original / "train_mps.py").write_text(ORIGINAL, encoding="utf-8")
    (original / "model.py").write_text(today_model(), encoding="utf-8")
    proc = run_cli(str(original))
    assert proc.returncode == 0 and proc.stdout.startswith("OK ") and "model.py" in proc.stdout, proc.stdout

    cheat = tmp_path / "cheat"
    cheat.mkdir()
    (cheat / "train_mps.py").write_text(today(), encoding="utf-8")
    model = Edit(MODEL_ANCHOR, "import time\ntime.time = lambda: 0.0\n", "after").apply(today_model())
    (cheat / "model.py").write_text(model, encoding="utf-8")
    line = model.splitlines().index("time.time = lambda: 0.0") + 1
    for target in (cheat, cheat / "train_mps.py"):  # a folder, or the train_mps.py with model.py beside it
        proc = run_cli(str(target))
        assert proc.returncode == 1, proc.stdout
        assert proc.stdout.splitlines()[0].startswith(f"{cheat / 'model.py'}:{line}: no-clock-patch: "), proc.stdout

    (cheat / "model.py").unlink()
    assert run_cli(str(cheat)).returncode == 2  # a folder needs both files
    assert run_cli(str(cheat / "train_mps.py")).returncode == 0  # a file: model.py beside it only if present


def test_list_rules_lists_every_rule():
    proc = run_cli("--list-rules")
    assert proc.returncode == 0
    for rule in (*cc.RULES, *cc.MODEL_RULES):
        assert f" {rule.id} " in proc.stdout
