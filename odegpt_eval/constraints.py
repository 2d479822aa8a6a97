"""Static check that a candidate `train_mps.py`, and the `model.py` beside it, keep the harness rules.

The harness copies a candidate's `model.py` and `train_mps.py` into a folder, imports `train_mps`, calls
`train()` with no arguments and ranks candidates by the returned `(best_vloss, elapsed_min)`. A ranking is
only fair if every candidate trains under the same fixed block and reports the same quantities, so this
script reads the candidate with `ast` (it never imports or executes it) and checks the rules in `RULES`
(train_mps.py) and `MODEL_RULES` (model.py).

Usage:
    python scripts/check_constraints.py PATH [PATH ...] [--json]
    python scripts/check_constraints.py --list-rules

PATH is a candidate folder (its train_mps.py and model.py are checked), a train_mps.py (the model.py beside
it is checked too, if there is one) or a model.py. Exit status: 0 when every rule holds (one OK line), 1 when
some rule is violated (one line per violation: `PATH:LINE: RULE-ID: explanation`, the explanation naming the
fix), 2 when a file is missing, unreadable or not valid Python.

In-process: `check(source) -> list[Violation]` for a train_mps.py and `check_model(source) -> list[Violation]`
for a model.py (both raise SyntaxError on invalid source). Adding a rule is writing one `check_*(tree) ->
list[Violation]` function and one `Rule(...)` row in `RULES` or `MODEL_RULES`.

Two layouts of train_mps.py are accepted, inferred from where the fixed names are assigned: the module-level
fixed block of odegpt's train_mps.py, and the fixed locals at the top of `train()` (after
`t_start = time.time()`) of the DreamTeam original, which gates evaluation with `% 100` and has no
`eval_interval`.

What the rules catch is the direct spelling of a cheat and every alias the checker can resolve statically:
a fixed name rebound in any scope, deleted or augmented; written through `globals()`/`vars()`/`locals()`/
`__dict__`/`f_globals` or a name holding one; through `setattr`/`__setattr__` with a string that
constant-folds (`'max_' + 'iters'`, f-strings with constant parts, names bound once to such strings); as an
attribute of the module itself (`import train_mps as me`, `sys.modules[__name__]`, `importlib.import_module`,
or a name holding one of those). `exec`/`eval`/`compile`/`__import__`, code loaders, `builtins` and shadowed
builtins, the clock (`time.*` in either file, `from time import time` rebound, `mock`), seeding functions,
`os.environ` in any spelling, the training loop's bound/exits/nesting, the eval gate's placement,
the batch size at sampling, the split feeding the training batches, checkpoint loads, and where `best_vloss`,
`elapsed_min` and the clock come from.

What static analysis cannot catch, so what only a trusted runner can (it must run each candidate in a fresh
process, with its own clock, data, environment and iteration count, and recompute the reported loss):
  - names computed from run-time data (`setattr(mod, open('k').read(), 5)`, keys built in loops, `chr()` sums,
    decoded bytes) and `getattr` chains through objects (`getattr(getattr(model, a), b) = ...`,
    `type(x).__mro__[1].__dict__`, `gc.get_objects()` walks, `ctypes` memory writes that slip past the import
    check through a third-party package);
  - cheats in the numerics: a model.py whose loss is scaled or leaks the targets, an evaluation on a batch the
    model was just trained on, a learning-rate or loss trick that only shows in the numbers;
  - cheats that only show at run time: a training loop left early by an exception caught outside it, threads
    or subprocesses that train in the background, files written by one run and read by the next outside
    `torch.load`/`pickle`, a slower or faster device than claimed, a modified `data/` folder or an
    environment variable set by the caller, monkeypatching done by a third module the candidate imports;
  - code paths the checker reads but cannot evaluate: a fixed name read behind a condition that is never
    true, a sampler that ignores its `split` argument through a data structure, a bound that equals
    `max_iters` only through arithmetic (accepted only as `max_iters` or the TRAIN_MPS_MAX_ITERS override).
Review of every accepted candidate's diff stays the last line of defence.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

# The fixed block, name -> value. `ctx` is checked separately: its value is the call `nullcontext()`.
FIXED_VALUES: dict[str, int | str] = {
    "batch_size": 8,
    "block_size": 64,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 32,
    "max_iters": 10001,
    "eval_interval": 100,
    "device": "mps",
}
FIXED_NAMES: tuple[str, ...] = (*FIXED_VALUES, "ctx")
# The DreamTeam original has no eval_interval (it gates with `% 100`); where a candidate defines one, it is fixed.
OPTIONAL_IN_TRAIN_LAYOUT = ("eval_interval",)
EVAL_INTERVAL = FIXED_VALUES["eval_interval"]
EXPECTED_RETURN = ("best_vloss", "elapsed_min")
DATA_FILES = ("train.bin", "val.bin")
DEVICE_NAMES = ("device", "ctx")
# eval_interval is not here: `% 100` is an accepted spelling of the evaluation gate.
SIZE_NAMES = ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "max_iters")
MAX_ITERS_ENV = "TRAIN_MPS_MAX_ITERS"  # the one accepted override of the training loop's bound
LAYOUTS = (
    "the module-level fixed block (odegpt's train_mps.py) or the fixed locals at the top of train(), after "
    "`t_start = time.time()` (the DreamTeam original)"
)
# Builtins a candidate may not rebind at module level or in train (the contract's range/len/min/float...).
BUILTIN_NAMES = frozenset(name for name in dir(builtins) if not name.startswith("_"))
DYNAMIC_CODE_NAMES = ("exec", "eval", "compile", "__import__")
CODE_LOADER_MODULES = ("runpy", "marshal", "code", "codeop", "ctypes", "cffi")
CODE_LOADER_ATTRS = ("spec_from_loader", "CodeType", "FunctionType", "run_path", "run_module")
SEED_FUNCS = frozenset(
    (
        "manual_seed",
        "manual_seed_all",
        "seed",
        "seed_all",
        "set_rng_state",
        "initial_seed",
        "default_generator",
        "Generator",
        "RandomState",
        "default_rng",
        "randint",
        "randperm",
        "rand",
        "randn",
        "random",
        "shuffle",
    )
)
SEEDING_CALLS = ("manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state")
LOAD_MODULES = ("torch", "pickle", "joblib", "safetensors", "dill")
HARNESS_MODULES = ("train_mps", "__main__")
FRAME_ATTRS = ("_getframe", "currentframe", "f_back", "f_globals", "f_locals", "getouterframes", "stack")


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str
    line: int | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    summary: str
    check: Callable[[ast.Module], list[Violation]]


# --- AST helpers ---------------------------------------------------------------------------------------


def _cached(tree: ast.Module, key: str, compute: Callable[[], object]):
    """One analysis per parsed tree, shared by the rules (an attribute on the tree; ast ignores it)."""
    cache = tree.__dict__.setdefault("_check_constraints_cache", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_int(node: ast.AST, value: int) -> bool:
    # `type(...) is int` so that True (== 1) and 8.0 (== 8) do not pass for an int setting.
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value == value


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _root_name(node: ast.AST) -> str | None:
    """`a` for `a`, `a.b.c`, `a.b[0].c`, `a().b`: the name an attribute chain starts from."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _called_name(call: ast.Call) -> str | None:
    """`f` for `f(...)` and `x.f(...)`."""
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _fold(node: ast.AST | None, consts: dict[str, str] | None = None) -> str | None:
    """The string `node` constant-folds to: literals, `+`, f-strings of such parts, `'sep'.join([...])`,
    `'{}'.format(...)`, and names bound once to such a string (`consts`); None when it depends on run time."""
    if node is None:
        return None
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.Name):
        return (consts or {}).get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _fold(node.left, consts), _fold(node.right, consts)
        return left + right if left is not None and right is not None else None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue) and value.format_spec is None and value.conversion in (-1, 115):
                part = _fold(value.value, consts)
                if part is None:
                    return None
                parts.append(part)
            else:
                return None
        return "".join(parts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.keywords:
        base = _fold(node.func.value, consts)
        if base is None:
            return None
        if node.func.attr == "join" and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple)):
            items = [_fold(e, consts) for e in node.args[0].elts]
            return base.join(items) if all(i is not None for i in items) else None
        if node.func.attr == "format":
            args = [_fold(a, consts) for a in node.args]
            if all(a is not None for a in args):
                try:
                    return base.format(*args)
                except (IndexError, KeyError, ValueError):
                    return None
    return None


def _module_scope(tree: ast.Module) -> Iterator[ast.AST]:
    """Nodes that run in the module's own scope: everything but the bodies of functions and classes."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            todo.extend(node.decorator_list)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _function_scope(func: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """Nodes of `func`'s body that belong to `func` itself, not to a nested function, lambda or class."""
    todo: list[ast.AST] = list(func.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))


def _own_nodes(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """`nodes` and their descendants, not entering nested functions, lambdas or classes."""
    todo = list(nodes)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))


def _train_defs(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [n for n in tree.body if isinstance(n, functions) and n.name == "train"]


def _find_train(tree: ast.Module) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    defs = _train_defs(tree)
    return defs[-1] if defs else None  # the last definition is the one the import leaves bound


def _reachable(tree: ast.Module, roots: Iterable[ast.AST]) -> list[ast.AST]:
    """`roots` plus every module-level function or class (and function nested in train) they name,
    transitively: what they may call."""

    def definitions() -> tuple[dict[str, ast.AST], dict[int, set[str]]]:
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        defs = {n.name: n for n in tree.body if isinstance(n, kinds)}
        train = _find_train(tree)
        if train is not None:
            defs.update({n.name: n for n in ast.walk(train) if isinstance(n, kinds) and n is not train})
        names = {id(d): _loaded_names(d) & set(defs) for d in defs.values()}
        return defs, names

    defs, names_of = _cached(tree, "definitions", definitions)
    seen: list[ast.AST] = []
    seen_ids: set[int] = set()
    todo = list(roots)
    while todo:
        node = todo.pop()
        if id(node) in seen_ids:
            continue
        seen_ids.add(id(node))
        seen.append(node)
        names = names_of.get(id(node))
        if names is None:
            names = _loaded_names(node) & set(defs)
        todo.extend(defs[name] for name in names)
    return seen


def _loaded_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _walk_all(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    for node in nodes:
        yield from ast.walk(node)


def _bound_names(node: ast.AST) -> list[tuple[str, str]]:
    """The plain names `node` itself binds or unbinds, each with how: [(name, how)]."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        return [(node.id, "assigned")]
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del):
        return [(node.id, "deleted")]
    if isinstance(node, ast.arg):
        return [(node.arg, "used as a parameter name")]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [(node.name, "redefined by def/class")]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        how = f"declared `{type(node).__name__.lower()}` (so it can be rebound)"
        return [(name, how) for name in node.names]
    if isinstance(node, ast.alias) and node.name != "*":
        return [(node.asname or node.name.split(".")[0], "bound by an import")]
    if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
        return [(node.name, "bound by except/match")]
    if isinstance(node, ast.MatchMapping) and node.rest:
        return [(node.rest, "bound by match")]
    return []


def _bindings(tree: ast.AST) -> list[tuple[str, ast.AST, str]]:
    """Every place a plain name is bound or unbound, in any scope: (name, node, how)."""

    def compute() -> list[tuple[str, ast.AST, str]]:
        out = []
        for node in ast.walk(tree):
            for name, how in _bound_names(node):
                if how == "assigned" and _is_augmented_target(tree, node):
                    how = "updated in place (augmented assignment)"
                out.append((name, node, how))
        return out

    return _cached(tree, "bindings", compute)


def _is_augmented_target(tree: ast.AST, node: ast.AST) -> bool:
    targets = _cached(
        tree, "aug-targets", lambda: {id(n.target) for n in ast.walk(tree) if isinstance(n, ast.AugAssign)}
    )
    return id(node) in targets


def _constants(tree: ast.Module) -> dict[str, str]:
    """Names bound exactly once in the whole file, by a plain assignment, to a string that folds."""

    def compute() -> dict[str, str]:
        counts: dict[str, int] = {}
        for name, _, _ in _bindings(tree):
            counts[name] = counts.get(name, 0) + 1
        single = [
            (n.targets[0].id, n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign)
            and len(n.targets) == 1
            and isinstance(n.targets[0], ast.Name)
            and counts.get(n.targets[0].id) == 1
        ]
        consts: dict[str, str] = {}
        for _ in range(3):  # chains of names, a few deep
            for name, value in single:
                folded = _fold(value, consts)
                if folded is not None:
                    consts[name] = folded
        return consts

    return _cached(tree, "constants", compute)


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted thing it was imported as: `import a.b as x` -> {x: a.b}, `import a.b` -> {a: a},
    `from a import b as c` -> {c: a.b}."""

    def compute() -> dict[str, str]:
        out: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    out[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    if alias.name != "*":
                        out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        return out

    return _cached(tree, "imports", compute)


def _aliases_of(tree: ast.Module, *modules: str) -> set[str]:
    """Local names bound to one of `modules` (or a submodule) by an import."""
    return {local for local, full in _imports(tree).items() if full in modules or full.split(".")[0] in modules}


def _assigned_from(tree: ast.AST, predicate: Callable[[ast.AST], bool]) -> set[str]:
    """Names bound (`=`, `:=`, annotated) anywhere to a value matching `predicate`."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and predicate(node.value):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None and predicate(node.value):
            if isinstance(node.target, ast.Name):
                out.add(node.target.id)
    return out


def _sys_modules(tree: ast.Module) -> Callable[[ast.AST], bool]:
    """A predicate: is the node `sys.modules` (through any alias of sys, or `from sys import modules`)?"""
    sys_names = _aliases_of(tree, "sys") | {"sys"}
    modules_names = {local for local, full in _imports(tree).items() if full == "sys.modules"}

    def is_sys_modules(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and node.attr == "modules":
            return isinstance(node.value, ast.Name) and node.value.id in sys_names
        return isinstance(node, ast.Name) and node.id in modules_names

    return is_sys_modules


def _module_entry(tree: ast.Module) -> Callable[[ast.AST], bool]:
    """A predicate: is the node a module object fetched at run time? `sys.modules[...]`, `sys.modules.get(...)`,
    `importlib.import_module(...)`, `__import__(...)`, `inspect.getmodule(...)`."""
    is_sys_modules = _sys_modules(tree)

    def is_entry(node: ast.AST) -> bool:
        if isinstance(node, ast.Subscript):
            return is_sys_modules(node.value)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "setdefault"):
                return is_sys_modules(func.value)
            return _called_name(node) in ("import_module", "__import__", "getmodule", "reload")
        return False

    return is_entry


def _module_objects(tree: ast.Module) -> Callable[[ast.AST], bool]:
    """A predicate: does the node denote a module object? An imported name, a module fetched at run time, or a
    name assigned one of those."""

    def compute() -> Callable[[ast.AST], bool]:
        is_entry = _module_entry(tree)
        names = set(_imports(tree)) | _assigned_from(tree, is_entry)

        def is_module(node: ast.AST) -> bool:
            return is_entry(node) or (isinstance(node, ast.Name) and node.id in names)

        return is_module

    return _cached(tree, "module-objects", compute)


def _namespaces(tree: ast.Module) -> Callable[[ast.AST], bool]:
    """A predicate: is the node a dict whose string keys are variable names? `globals()`, `vars(...)`,
    `locals()`, `X.__dict__`, `f.__globals__`, `frame.f_globals`/`f_locals`, or a name assigned one."""

    def direct(node: ast.AST) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id in ("globals", "vars", "locals")
        return isinstance(node, ast.Attribute) and node.attr in ("__dict__", "__globals__", "f_globals", "f_locals")

    def compute() -> Callable[[ast.AST], bool]:
        names = _assigned_from(tree, direct)
        return lambda node: direct(node) or (isinstance(node, ast.Name) and node.id in names)

    return _cached(tree, "namespaces", compute)


_DICT_MUTATORS = ("update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__", "__ior__")


def _setattr_calls(tree: ast.Module) -> Iterator[tuple[ast.Call, ast.AST, str | None]]:
    """`setattr(obj, key, ...)`, `delattr(obj, key)`, `obj.__setattr__(key, ...)`, `object.__setattr__(obj, key,
    ...)`: (call, obj, folded key or None)."""
    consts = _constants(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("setattr", "delattr") and len(node.args) >= 2:
            yield node, node.args[0], _fold(node.args[1], consts)
        elif isinstance(func, ast.Attribute) and func.attr in ("__setattr__", "__delattr__"):
            if len(node.args) >= (3 if func.attr == "__setattr__" else 2):  # object.__setattr__(obj, key, v)
                yield node, node.args[0], _fold(node.args[1], consts)
            elif node.args:
                yield node, func.value, _fold(node.args[0], consts)


def _namespace_writes(tree: ast.Module, is_target: Callable[[ast.AST], bool]) -> Iterator[tuple[str, ast.AST, str]]:
    """Keys written into a namespace dict `is_target` accepts: (folded key, node, how); key "" if unknown."""
    consts = _constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)) and is_target(node.value):
            yield _fold(node.slice, consts) or "", node, "written through a namespace dict (globals()/vars()/__dict__)"
        elif isinstance(node, ast.AugAssign) and is_target(node.target):
            yield "", node, "updated in place"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _DICT_MUTATORS:
            if is_target(node.func.value):
                keys = [_fold(a, consts) for a in node.args[:1]] + [k.arg for k in node.keywords]
                for arg in node.args:
                    if isinstance(arg, ast.Dict):
                        keys += [_fold(k, consts) for k in arg.keys]
                how = f"written by .{node.func.attr}() on a namespace dict (globals()/vars()/__dict__)"
                for key in keys or [""]:
                    yield key or "", node, how


def _attribute_writes(tree: ast.Module, is_target: Callable[[ast.AST], bool]) -> Iterator[tuple[str, ast.AST, str]]:
    """Attributes written on an object `is_target` accepts: `obj.x = ...`, `del obj.x`, `obj.x += ...`,
    setattr/delattr, and its `__dict__`/`vars(obj)`: (attribute or "" if unknown, node, how)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)) and is_target(node.value):
            yield node.attr, node, "written as a module attribute"
    for call, obj, key in _setattr_calls(tree):
        if is_target(obj):
            yield key or "", call, f"written by {_called_name(call)}()"

    def is_dict_of_target(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and node.attr == "__dict__":
            return is_target(node.value)
        return (
            isinstance(node, ast.Call)
            and _is_name(node.func, "vars")
            and len(node.args) == 1
            and is_target(node.args[0])
        )

    yield from _namespace_writes(tree, is_dict_of_target)


def _is_nullcontext_call(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and not node.args and not node.keywords):
        return False
    func = node.func
    return _is_name(func, "nullcontext") or (
        isinstance(func, ast.Attribute) and func.attr == "nullcontext" and _is_name(func.value, "contextlib")
    )


def _fixed_value_text(name: str) -> str:
    return "nullcontext()" if name == "ctx" else repr(FIXED_VALUES[name])


def _has_fixed_value(name: str, value: ast.AST) -> bool:
    if name == "ctx":
        return _is_nullcontext_call(value)
    expected = FIXED_VALUES[name]
    if isinstance(expected, int):
        return _is_int(value, expected)
    return _const_str(value) == expected


def _fixed_definitions(body: list[ast.stmt]) -> dict[str, ast.Assign | ast.AnnAssign]:
    """The first plain assignment of each fixed name among the statements of `body` (not nested ones)."""
    out: dict[str, ast.Assign | ast.AnnAssign] = {}
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target = stmt.target
        else:
            continue
        if isinstance(target, ast.Name) and target.id in FIXED_NAMES and target.id not in out:
            out[target.id] = stmt
    return out


def _layout(tree: ast.Module) -> tuple[str, dict[str, ast.Assign | ast.AnnAssign]]:
    """("module" | "train" | "none", the fixed definitions): where most of the fixed names are assigned."""

    def compute():
        module_defs = _fixed_definitions(tree.body)
        train = _find_train(tree)
        train_defs = _fixed_definitions(train.body) if train is not None else {}
        required = [n for n in FIXED_NAMES if n not in OPTIONAL_IN_TRAIN_LAYOUT]
        in_module = sum(n in module_defs for n in required)
        in_train = sum(n in train_defs for n in required)
        if in_module == 0 and in_train == 0:
            return "none", {}
        if in_module >= in_train:
            return "module", module_defs
        for name in OPTIONAL_IN_TRAIN_LAYOUT:  # a module-level `eval_interval = 100` beside the fixed locals
            if name not in train_defs and name in module_defs:
                train_defs[name] = module_defs[name]
        return "train", train_defs

    return _cached(tree, "layout", compute)


def _environ(tree: ast.Module) -> Callable[[ast.AST], bool]:
    """A predicate: is the node the process environment? `os.environ` (any receiver), `environ`/`environb`,
    `from os import environ as E`, `getattr(os, 'environ')`, or a name assigned one of those."""

    def compute() -> Callable[[ast.AST], bool]:
        consts = _constants(tree)
        imported = {local for local, full in _imports(tree).items() if full in ("os.environ", "os.environb")}

        def direct(node: ast.AST) -> bool:
            if isinstance(node, ast.Attribute):
                return node.attr in ("environ", "environb")
            if isinstance(node, ast.Call) and _is_name(node.func, "getattr") and len(node.args) >= 2:
                return _fold(node.args[1], consts) in ("environ", "environb")
            return isinstance(node, ast.Name) and node.id in ("environ", "environb", *imported)

        names = _assigned_from(tree, direct)
        return lambda node: direct(node) or (isinstance(node, ast.Name) and node.id in names)

    return _cached(tree, "environ", compute)


def _env_read(node: ast.AST, tree: ast.Module) -> tuple[ast.AST, ast.AST | None] | None:
    """(key node, default) for `os.environ[key]`, `os.environ.get(key[, default])`, `os.getenv(key[, default])`."""
    is_environ = _environ(tree)
    if isinstance(node, ast.Subscript) and is_environ(node.value):
        return node.slice, None
    if not (isinstance(node, ast.Call) and node.args and not node.keywords):
        return None
    func = node.func
    reads = isinstance(func, ast.Attribute) and func.attr == "get" and is_environ(func.value)
    if reads or _called_name(node) == "getenv":
        return node.args[0], node.args[1] if len(node.args) > 1 else None
    return None


def _is_falsy_constant(node: ast.AST | None) -> bool:
    return node is None or (isinstance(node, ast.Constant) and node.value in (None, "", "0", 0))


def _raises_or_none(default: ast.AST | None) -> bool:
    """An env read's default that cannot stand in for a number: none (KeyError/None), None or ''."""
    return default is None or (isinstance(default, ast.Constant) and default.value in (None, ""))


def _is_override_read(node: ast.AST, tree: ast.Module, falsy_default_ok: bool) -> bool:
    """`int(<read of TRAIN_MPS_MAX_ITERS>)` whose default (if any) cannot stand in for max_iters: none or
    None/'' (both raise), or any falsy one where `or max_iters` follows (`falsy_default_ok`)."""
    if not (isinstance(node, ast.Call) and _is_name(node.func, "int") and len(node.args) == 1 and not node.keywords):
        return False
    read = _env_read(node.args[0], tree)
    if read is None or _fold(read[0], _constants(tree)) != MAX_ITERS_ENV:
        return False
    return _raises_or_none(read[1]) or (falsy_default_ok and _is_falsy_constant(read[1]))


def _module_function(tree: ast.Module, node: ast.AST) -> ast.FunctionDef | None:
    if not isinstance(node, ast.Name):
        return None
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == node.id]
    return defs[-1] if defs else None


def _is_env_int_reader(func: ast.FunctionDef, tree: ast.Module) -> bool:
    """A helper `f(name, ...)` whose every return is None or `int(<env read of name>)` (the read's default
    none, None or ''), so `f('TRAIN_MPS_MAX_ITERS', ...)` is the override or None, never a number of its own."""
    if not func.args.args:
        return False
    param = func.args.args[0].arg
    assignments = _assignments(func.body)

    def is_param_read(node: ast.AST, depth: int = 0) -> bool:
        if isinstance(node, ast.Name) and depth < 3:
            bound = assignments.get(node.id, [])
            return bool(bound) and all(v is not None and is_param_read(v, depth + 1) for v, _ in bound)
        read = _env_read(node, tree)
        return read is not None and _is_name(read[0], param) and _raises_or_none(read[1])

    returns = [n for n in _function_scope(func) if isinstance(n, ast.Return)]
    return bool(returns) and all(
        (r.value is None or (isinstance(r.value, ast.Constant) and r.value.value is None))
        or (
            isinstance(r.value, ast.Call)
            and _is_name(r.value.func, "int")
            and len(r.value.args) == 1
            and is_param_read(r.value.args[0])
        )
        for r in returns
    )


def _is_iters_value(value: ast.AST, tree: ast.Module, assignments: dict, depth: int = 0) -> bool:
    """What stands for the loop bound: `max_iters`, the TRAIN_MPS_MAX_ITERS override (`int(os.environ[...])`,
    `int(os.environ.get(...)) or max_iters`), a name assigned only those, or a call of a module-level helper
    returning only those (`iters_from_env()`, itself reading `env_int('TRAIN_MPS_MAX_ITERS', ...)`)."""
    if depth > 4:
        return False
    if _is_name(value, "max_iters") or _is_override_read(value, tree, falsy_default_ok=False):
        return True
    if isinstance(value, ast.BoolOp) and isinstance(value.op, ast.Or):
        return _is_name(value.values[-1], "max_iters") and all(
            _is_override_read(v, tree, falsy_default_ok=True) for v in value.values[:-1]
        )
    if isinstance(value, ast.Name):
        bound = assignments.get(value.id, [])
        return bool(bound) and all(v is not None and _is_iters_value(v, tree, assignments, depth + 1) for v, _ in bound)
    func = _module_function(tree, value.func) if isinstance(value, ast.Call) else None
    if func is None:
        return False
    if value.args and _fold(value.args[0], _constants(tree)) == MAX_ITERS_ENV and _is_env_int_reader(func, tree):
        return True
    returns = [n for n in _function_scope(func) if isinstance(n, ast.Return)]
    inner = _assignments(func.body)
    return bool(returns) and all(
        r.value is not None and _is_iters_value(r.value, tree, inner, depth + 1) for r in returns
    )


def _assignments(nodes: Iterable[ast.AST]) -> dict[str, list[tuple[ast.AST | None, ast.AST]]]:
    """name -> [(value or None where it is not a plain value, statement)] for every binding in `nodes`.
    A tuple target takes the matching element of a tuple value, else the whole value (`_, v = model(x)`)."""
    out: dict[str, list[tuple[ast.AST | None, ast.AST]]] = {}

    def bind(target: ast.AST, value: ast.AST | None, stmt: ast.AST) -> None:
        if isinstance(target, ast.Name):
            out.setdefault(target.id, []).append((value, stmt))
        elif isinstance(target, (ast.Tuple, ast.List)):
            elements = value.elts if isinstance(value, (ast.Tuple, ast.List)) else None
            for i, element in enumerate(target.elts):
                same_shape = elements is not None and len(elements) == len(target.elts)
                bind(element, elements[i] if same_shape else value, stmt)
        elif isinstance(target, ast.Starred):
            bind(target.value, value, stmt)

    for node in _walk_all(nodes):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                bind(target, node.value, node)
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            bind(node.target, node.value, node)
        elif isinstance(node, ast.AugAssign):
            bind(node.target, None, node)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            bind(node.target, None, node)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            bind(node.optional_vars, node.context_expr, node.context_expr)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                out.setdefault(name, []).append((None, node))
    return out


def _is_backward_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward"


def _loops(tree: ast.Module) -> dict:
    """The training loops: every loop reachable from train whose body (or what it calls) calls `.backward()`.
    `main` is the one loop not inside another such loop (None when there is none or several), `mains` all of
    those, `inner` the backward loops inside `main`, `reach` loop id -> ids of every node its body may run."""

    def compute() -> dict:
        train = _find_train(tree)
        if train is None:
            return {"train": None, "main": None, "mains": [], "inner": [], "reach": {}, "all": []}
        seen: set[int] = set()
        loops = []
        for node in _walk_all(_reachable(tree, [train])):
            if isinstance(node, (ast.For, ast.AsyncFor, ast.While)) and id(node) not in seen:
                seen.add(id(node))
                loops.append(node)
        reach = {id(loop): {id(n) for n in _walk_all(_reachable(tree, [*loop.body, *loop.orelse]))} for loop in loops}
        backward_ids = {id(n) for n in _walk_all(_reachable(tree, [train])) if _is_backward_call(n)}
        trains = [loop for loop in loops if reach[id(loop)] & backward_ids]
        mains = [loop for loop in trains if not any(o is not loop and id(loop) in reach[id(o)] for o in trains)]
        main = mains[0] if len(mains) == 1 else None
        inner = [loop for loop in trains if main is not None and loop is not main and id(loop) in reach[id(main)]]
        return {"train": train, "main": main, "mains": mains, "inner": inner, "reach": reach, "all": loops}

    return _cached(tree, "loops", compute)


def _direct_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of `body` that run on every pass: `body` itself and the blocks of its with/try."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            yield from _direct_statements(stmt.body)
        elif isinstance(stmt, ast.Try):
            yield from _direct_statements([*stmt.body, *stmt.finalbody])


def _is_modulo_zero(node: ast.AST) -> bool:
    """`<name> % eval_interval == 0` or `<name> % 100 == 0`, either side of the `==`."""
    return _modulo_zero_name(node, strict=True) is not None


def _modulo_zero_name(node: ast.AST, strict: bool) -> str | None:
    """The step name of `<name> % <d> == 0` (either side of `==`); with `strict`, d is eval_interval or 100."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return None
    left, right = node.left, node.comparators[0]
    if _is_int(left, 0):
        left, right = right, left
    if not (
        _is_int(right, 0)
        and isinstance(left, ast.BinOp)
        and isinstance(left.op, ast.Mod)
        and isinstance(left.left, ast.Name)
    ):
        return None
    if strict and not (_is_name(left.right, "eval_interval") or _is_int(left.right, EVAL_INTERVAL)):
        return None
    return left.left.id


def _is_eval_gate(test: ast.AST) -> bool:
    # `or` may widen the gate (e.g. also evaluate on the last step); `and` could switch it off.
    operands = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or) else [test]
    return any(_is_modulo_zero(operand) for operand in operands)


def _is_periodic(test: ast.AST) -> bool:
    """A test holding some `<name> % <d> == 0`: a periodic block (a valid gate or not; eval-interval judges)."""
    return any(_modulo_zero_name(n, strict=False) for n in ast.walk(test))


def _mentions_val(node: ast.AST) -> bool:
    """The string 'val' / 'val.bin', or a name or attribute with a `val` word (`val_data`, `self.val`)."""
    if _const_str(node) in ("val", "val.bin"):
        return True
    word = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "val" in word.lower().split("_")


def _val_reference(node: ast.AST, consts: dict[str, str]) -> bool:
    """`_mentions_val`, or an expression folding to a val split name or file ('va' + 'l', f'{"va"}l.bin')."""
    if _mentions_val(node):
        return True
    if isinstance(node, (ast.Constant, ast.BinOp, ast.JoinedStr, ast.Call, ast.Name)):
        folded = _fold(node, consts)
        if folded is not None:
            return folded in ("val", "valid", "validation", "val.bin") or folded.endswith("/val.bin")
    return False


# --- rules ---------------------------------------------------------------------------------------------


def check_fixed_block(tree: ast.Module) -> list[Violation]:
    """Each fixed name is assigned once to its fixed value, either at module level (odegpt's layout) or at the
    top of train() (the DreamTeam original's), and never rebound, deleted or written through any alias."""
    rule = "fixed-block"
    out: list[Violation] = []
    layout, definitions = _layout(tree)
    if layout == "none":
        out.append(Violation(rule, f"no fixed block found; write it as {LAYOUTS}", None))
    where = "at module level" if layout == "module" else "at the top of train()"
    for name in FIXED_NAMES if layout != "none" else ():
        stmt = definitions.get(name)
        if stmt is None:
            if layout == "module" or name not in OPTIONAL_IN_TRAIN_LAYOUT:
                msg = f"`{name} = {_fixed_value_text(name)}` missing from the fixed block {where}; restore it"
                out.append(Violation(rule, msg))
        elif not _has_fixed_value(name, stmt.value):
            got = ast.unparse(stmt.value)
            msg = f"`{name} = {got}`; the fixed block requires `{name} = {_fixed_value_text(name)}`"
            out.append(Violation(rule, msg, stmt.lineno))
    definition_targets = {
        id(stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target) for stmt in definitions.values()
    }

    fix = "it may only be set once, in the fixed block; use another name"
    for name, node, how in _bindings(tree):
        if name in FIXED_NAMES and id(node) not in definition_targets:
            out.append(Violation(rule, f"fixed name `{name}` {how}; {fix}", getattr(node, "lineno", None)))
    for key, node, how in _namespace_writes(tree, _namespaces(tree)):
        if key in FIXED_NAMES:
            out.append(Violation(rule, f"fixed name `{key}` {how}; {fix}", node.lineno))
    is_module = _module_objects(tree)
    for key, node, how in _attribute_writes(tree, is_module):
        if key in FIXED_NAMES:
            out.append(Violation(rule, f"fixed name `{key}` {how}; {fix}", node.lineno))
    for call, obj, key in _setattr_calls(tree):  # setattr on any object with a fixed name: not only modules
        if key in FIXED_NAMES and not is_module(obj):
            msg = f"fixed name `{key}` written by {_called_name(call)}(); {fix}"
            out.append(Violation(rule, msg, call.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            msg = f"`from {node.module} import *` may rebind fixed names; import names explicitly"
            out.append(Violation(rule, msg, node.lineno))

    # `ctx = nullcontext()` only means what it says if `nullcontext` is contextlib's.
    for name, node, how in _bindings(tree):
        if name in ("nullcontext", "contextlib") and not (
            isinstance(node, ast.alias) and node.name == name and node.asname in (None, name)
        ):
            msg = f"`{name}` {how}; it may only be imported from the standard library under its own name"
            out.append(Violation(rule, msg, getattr(node, "lineno", None)))
    return out


def check_no_env_write(tree: ast.Module) -> list[Violation]:
    """No write to the process environment: it could set TRAIN_MPS_* and shorten the candidate's own run."""
    rule = "no-env-write"
    is_environ = _environ(tree)
    putenv = {local for local, full in _imports(tree).items() if full in ("os.putenv", "os.unsetenv")}
    out: list[Violation] = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            if is_environ(node.value):
                what = f"`{ast.unparse(node)}` is written"
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            if node.attr in ("environ", "environb") or is_environ(node.value):
                what = f"`{ast.unparse(node)}` is replaced"
        elif isinstance(node, ast.AugAssign) and is_environ(node.target):
            what = f"`{ast.unparse(node.target)}` is updated in place"
        elif isinstance(node, ast.Call):
            func = node.func
            mutates = isinstance(func, ast.Attribute) and func.attr in _DICT_MUTATORS
            if mutates and is_environ(func.value):
                what = f"`{ast.unparse(func)}(...)` is called"
            elif _called_name(node) in ("putenv", "unsetenv") or (isinstance(func, ast.Name) and func.id in putenv):
                what = f"`{ast.unparse(func)}(...)` is called"
        if what:
            msg = f"{what}; candidates may read the environment but never write it (TRAIN_MPS_* overrides): remove it"
            out.append(Violation(rule, msg, node.lineno))
    for key, node, how in _attribute_writes(tree, _module_objects(tree)):
        if key in ("environ", "environb", "putenv", "unsetenv", "getenv"):
            out.append(Violation(rule, f"`os.{key}` {how}; never replace the environment: remove it", node.lineno))
    return out


def check_train_callable(tree: ast.Module) -> list[Violation]:
    """A plain module-level `def train` exists, takes no required argument and is not rebound or wrapped."""
    rule = "train-callable"
    defs = _train_defs(tree)
    if not defs:
        return [Violation(rule, "no module-level `def train():`; the harness calls `train()`")]
    train = defs[-1]
    out = [Violation(rule, "`train` defined more than once at module level", d.lineno) for d in defs[:-1]]
    if isinstance(train, ast.AsyncFunctionDef):
        msg = "`train` is async; the harness calls it as a plain function"
        out.append(Violation(rule, msg, train.lineno))
    if train.decorator_list:
        msg = "`train` is decorated; a decorator could change what the harness receives"
        out.append(Violation(rule, msg, train.lineno))
    args = train.args
    positional = [*args.posonlyargs, *args.args]
    required = [a.arg for a in positional[: len(positional) - len(args.defaults)]]
    required += [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    if required:
        msg = f"`train` requires argument(s) {', '.join(required)}; the harness calls `train()` with none"
        out.append(Violation(rule, msg, train.lineno))
    for node in _module_scope(tree):
        is_def = any(node is d for d in defs)
        if not is_def and any(name == "train" for name, _ in _bound_names(node)):
            out.append(Violation(rule, "module-level name `train` rebound besides its def", node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Global) and "train" in node.names:
            out.append(Violation(rule, "`global train` lets a function rebind `train`", node.lineno))
    return out


def _returned_name(node: ast.AST) -> str | None:
    """`name` for `name` or `float(name)`: float() only turns a 0-d tensor or numpy scalar into a float."""
    is_float_call = isinstance(node, ast.Call) and _is_name(node.func, "float")
    if is_float_call and len(node.args) == 1 and not node.keywords:
        node = node.args[0]
    return node.id if isinstance(node, ast.Name) else None


def _is_expected_return(node: ast.Return) -> bool:
    value = node.value
    return isinstance(value, ast.Tuple) and [_returned_name(e) for e in value.elts] == list(EXPECTED_RETURN)


def check_train_return(tree: ast.Module) -> list[Violation]:
    """train ends with `return best_vloss, elapsed_min`, and every return in train returns exactly that.

    Each element may be wrapped in the builtin `float(...)`, which cannot change a float.
    """
    rule = "train-return"
    train = _find_train(tree)
    if train is None:
        return []  # reported by train-callable
    expected = f"return {', '.join(EXPECTED_RETURN)}"
    out: list[Violation] = []
    last = train.body[-1]
    if not isinstance(last, ast.Return):  # a wrong final return is reported with the other returns below
        out.append(Violation(rule, f"train's last statement must be `{expected}`", last.lineno))
    for node in _function_scope(train):
        if isinstance(node, ast.Return) and not _is_expected_return(node):
            got = ast.unparse(node)
            msg = f"`{got}` in train; every return must be exactly `{expected}`"
            out.append(Violation(rule, msg, node.lineno))
        elif isinstance(node, (ast.Yield, ast.YieldFrom)):
            out.append(Violation(rule, "train yields, so `train()` would return a generator", node.lineno))
    # `float(best_vloss)` is only a conversion while `float` is the builtin.
    for name, node, how in _bindings(tree):
        if name == "float":
            msg = f"`float` {how}; the return may wrap values in the builtin float only"
            out.append(Violation(rule, msg, node.lineno))
    return out


def check_eval_interval(tree: ast.Module) -> list[Violation]:
    """train evaluates on the val split under `if <step> % eval_interval == 0:` (or `% 100`), placed directly in
    the training loop (not under another `if`), on the loop's own step, widened by `or <step> == ...` at most."""
    rule = "eval-interval"
    train = _find_train(tree)
    if train is None:
        return []
    loops = _loops(tree)
    main = loops["main"]
    gates = [n for n in ast.walk(train) if isinstance(n, ast.If) and _is_eval_gate(n.test)]
    if main is not None:
        direct = [s for s in _direct_statements(main.body) if isinstance(s, ast.If) and _is_eval_gate(s.test)]
        if gates and not direct:
            msg = (
                "the `% eval_interval == 0` block is not directly in the training loop (it sits under another "
                "if/loop, or outside the loop); put it in the loop's body so it runs every 100 iterations"
            )
            return [Violation(rule, msg, gates[0].lineno)]
        gates = direct
    if not gates:
        msg = "no `if <step> % eval_interval == 0:` in train; evaluation must run every 100 iterations"
        return [Violation(rule, msg, (main or train).lineno)]
    out: list[Violation] = []
    step = main.target.id if main is not None and isinstance(getattr(main, "target", None), ast.Name) else None
    for gate in gates:
        operands = gate.test.values if isinstance(gate.test, ast.BoolOp) else [gate.test]
        for operand in operands:
            name = _modulo_zero_name(operand, strict=True)
            if name is not None:
                if step is not None and name != step:
                    msg = f"the gate tests `{name}`, not the training loop's step `{step}`; gate on `{step}`"
                    out.append(Violation(rule, msg, gate.lineno))
            elif not (
                isinstance(operand, ast.Compare)
                and all(isinstance(op, ast.Eq) for op in operand.ops)
                and not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod) for n in ast.walk(operand))
            ):
                msg = (
                    f"`or {ast.unparse(operand)}` widens the eval gate beyond single steps (evaluating more often "
                    "than every 100 iterations); `or` may only add `<step> == <n>` cases"
                )
                out.append(Violation(rule, msg, gate.lineno))
    if not any(any(_mentions_val(n) for n in _walk_all(_reachable(tree, gate.body))) for gate in gates):
        msg = "the `% eval_interval == 0` block never touches the val split ('val', val_*), nor what it calls"
        out.append(Violation(rule, msg, gates[0].lineno))
    return out


def check_data_files(tree: ast.Module) -> list[Violation]:
    """Training reads train.bin and validation reads val.bin (as string constants)."""
    strings = {s for n in ast.walk(tree) if (s := _const_str(n)) is not None}
    missing = [f for f in DATA_FILES if not any(s == f or s.endswith("/" + f) for s in strings)]
    return [Violation("data-files", f"no string constant '{f}'; train must read {f}") for f in missing]


def _unread_in_train(tree: ast.Module, rule: str, names: Iterable[str], why: str) -> list[Violation]:
    train = _find_train(tree)
    if train is None:
        return []
    reached = _walk_all(_reachable(tree, [train]))
    loaded = {n.id for n in reached if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return [
        Violation(rule, f"`{name}` is never read by train or what it calls; {why}", train.lineno)
        for name in names
        if name not in loaded
    ]


def check_device_ctx_used(tree: ast.Module) -> list[Violation]:
    """`device` and `ctx` are read in train or in a module-level function/class train may call."""
    why = "run on the fixed device under the fixed ctx"
    return _unread_in_train(tree, "device-ctx-used", DEVICE_NAMES, why)


def check_sizes_used(tree: ast.Module) -> list[Violation]:
    """The fixed sizes and max_iters are read by train or what it calls (not replaced by other literals)."""
    why = "the run must use the fixed setting, not a literal"
    return _unread_in_train(tree, "sizes-used", SIZE_NAMES, why)


def check_no_dynamic_code(tree: ast.Module) -> list[Violation]:
    """No code built from strings: exec/eval/compile/__import__ (also fetched by getattr), importlib with a
    computed name, code objects and loaders (runpy, marshal, ctypes, spec_from_loader, types.CodeType)."""
    rule = "no-dynamic-code"
    consts = _constants(tree)
    fix = "write the code out in the file instead"
    out: list[Violation] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in DYNAMIC_CODE_NAMES:
            out.append(Violation(rule, f"`{node.id}` runs code the checker cannot read; {fix}", node.lineno))
        elif isinstance(node, ast.Call) and _is_name(node.func, "getattr") and len(node.args) >= 2:
            if _fold(node.args[1], consts) in DYNAMIC_CODE_NAMES:
                msg = f"`{ast.unparse(node)}` fetches a code runner; {fix}"
                out.append(Violation(rule, msg, node.lineno))
        elif isinstance(node, ast.Call) and _called_name(node) == "import_module":
            if not node.args or _fold(node.args[0], consts) is None:
                msg = f"`{ast.unparse(node)}` imports a module named at run time; import it by a literal name"
                out.append(Violation(rule, msg, node.lineno))
        elif isinstance(node, ast.Attribute) and node.attr in CODE_LOADER_ATTRS:
            msg = f"`{ast.unparse(node)}` builds or runs code objects; {fix}"
            out.append(Violation(rule, msg, node.lineno))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in CODE_LOADER_MODULES:
                    msg = f"`import {module}` loads or runs code (or memory) the checker cannot read; {fix}"
                    out.append(Violation(rule, msg, node.lineno))
    return out


def _builtins_patches(tree: ast.Module) -> list[Violation]:
    rule = "no-builtins-patch"
    fix = "leave the builtins alone"
    out: list[Violation] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "builtins" for m in modules):
                out.append(Violation(rule, f"`builtins` imported, so it can be patched; {fix}", node.lineno))
        elif isinstance(node, ast.Name) and node.id == "__builtins__":
            out.append(Violation(rule, f"`__builtins__` used, so the builtins can be patched; {fix}", node.lineno))
    consts = _constants(tree)
    is_entry = _module_entry(tree)
    for node in ast.walk(tree):  # sys.modules['builtins'].range = ...
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)) and is_entry(node.value):
            entry = node.value
            key = entry.slice if isinstance(entry, ast.Subscript) else entry.args[0] if entry.args else None
            if _fold(key, consts) == "builtins":
                out.append(Violation(rule, f"`{ast.unparse(node)}` patches the builtins; {fix}", node.lineno))
    return out


def check_no_builtins_patch(tree: ast.Module) -> list[Violation]:
    """No `builtins`/`__builtins__` in the file, and no builtin name (range, len, min, max, float, int, ...)
    rebound at module level or in train."""
    out = _builtins_patches(tree)
    train = _find_train(tree)
    scopes = [*_module_scope(tree), *(_function_scope(train) if train is not None else ())]
    if train is not None:
        scopes += [*train.args.posonlyargs, *train.args.args, *train.args.kwonlyargs]
        scopes += [a for a in (train.args.vararg, train.args.kwarg) if a is not None]
    for node in scopes:
        for name, how in _bound_names(node):
            if name in BUILTIN_NAMES and not (isinstance(node, ast.alias) and name in ("time",)):
                msg = f"builtin `{name}` {how} (shadowing it); rename it"
                out.append(Violation("no-builtins-patch", msg, getattr(node, "lineno", None)))
    return out


def check_no_clock_patch(tree: ast.Module) -> list[Violation]:
    """The clock is the standard library's: nothing written on the `time` module (any alias), `time` bound only
    by `import time`, names imported from time never rebound, no `mock` patching."""
    rule = "no-clock-patch"
    fix = "elapsed_min must come from the real time.time(); remove it"
    out: list[Violation] = []
    imports = _imports(tree)
    time_modules = {local for local, full in imports.items() if full == "time"}
    consts = _constants(tree)
    is_entry = _module_entry(tree)

    def is_time(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in time_modules
        if is_entry(node):
            key = node.slice if isinstance(node, ast.Subscript) else node.args[0] if node.args else None
            return _fold(key, consts) == "time"
        return False

    for key, node, how in _attribute_writes(tree, is_time):
        out.append(Violation(rule, f"`time.{key or '<attribute>'}` {how}; {fix}", node.lineno))
    from_time = {local for local, full in imports.items() if full.startswith("time.")}
    for name, node, how in _bindings(tree):
        is_plain_import = isinstance(node, ast.alias) and (node.asname or node.name) == name
        if name == "time" and not (is_plain_import and node.name in ("time",)) and name not in from_time:
            out.append(Violation(rule, f"`time` {how}; `time` must be the module of `import time`", node.lineno))
        elif name in from_time and not is_plain_import:
            out.append(Violation(rule, f"`{name}` (imported from time) {how}; {fix}", getattr(node, "lineno", None)))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            names += [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            if any(n == "mock" or n.startswith("mock.") or n.startswith("unittest.mock") for n in names):
                msg = "`mock` imported: it patches modules (time, os, torch) at run time; remove it"
                out.append(Violation(rule, msg, node.lineno))
    return out


def check_no_seed_patch(tree: ast.Module) -> list[Violation]:
    """No seeding or random-number function of a module (torch, random, numpy...) replaced: the runner's seed
    must mean what it says."""
    rule = "no-seed-patch"
    out: list[Violation] = []
    is_module = _module_objects(tree)

    def on_module(node: ast.AST) -> bool:  # torch, torch.cuda, np.random, ...: a chain from a module
        while isinstance(node, ast.Attribute):
            node = node.value
        return is_module(node)

    for key, node, how in _attribute_writes(tree, on_module):
        if key in SEED_FUNCS:
            msg = f"`{key}` {how}: seeding/random functions must stay the library's; remove it"
            out.append(Violation(rule, msg, node.lineno))
    return out


def _training_loop_problems(tree: ast.Module) -> list[Violation]:
    rule = "training-loop"
    loops = _loops(tree)
    train, main = loops["train"], loops["main"]
    if train is None:
        return []
    shape = "`for <step> in range(max_iters):` calling `loss.backward()` (directly or in a helper)"
    if not loops["mains"]:
        return [Violation(rule, f"no training loop found in train; write it as {shape}", train.lineno)]
    if main is None:
        lines = ", ".join(str(loop.lineno) for loop in loops["mains"])
        msg = f"more than one training loop (lines {lines}); train once, in one {shape}"
        return [Violation(rule, msg, loops["mains"][1].lineno)]
    out: list[Violation] = []
    for loop in loops["inner"]:
        msg = (
            "a loop inside the training loop also runs backward (restarts, repeated steps or gradient accumulation "
            "change the training per iteration); one backward on one batch per iteration"
        )
        out.append(Violation(rule, msg, loop.lineno))
    bound = None
    if isinstance(main, ast.For) and isinstance(main.iter, ast.Call) and _is_name(main.iter.func, "range"):
        args = main.iter.args
        if len(args) == 1 and not main.iter.keywords:
            bound = args[0]
        elif len(args) == 2 and _is_int(args[0], 0) and not main.iter.keywords:
            bound = args[1]
    if bound is None or not isinstance(main.target, ast.Name):
        msg = f"the training loop is `{ast.unparse(main).splitlines()[0]}`; write it as {shape}"
        return [*out, Violation(rule, msg, main.lineno)]
    if not _is_name(bound, "max_iters"):
        if not _is_iters_value(bound, tree, _assignments([train])):
            msg = (
                f"the training loop runs `range({ast.unparse(bound)})`, not the fixed max_iters; bound it by "
                f"`max_iters` (or a name set only to max_iters and the {MAX_ITERS_ENV} override)"
            )
            out.append(Violation(rule, msg, main.lineno))
    step = main.target.id
    for _value, stmt in _assignments(main.body).get(step, []):
        msg = f"the loop step `{step}` is rebound inside the training loop; leave it to the loop"
        out.append(Violation(rule, msg, stmt.lineno))

    def escapes(node: ast.AST, in_inner_loop: bool) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, ast.Return) or (isinstance(child, (ast.Break, ast.Continue)) and not in_inner_loop):
                yield child
            yield from escapes(child, in_inner_loop or isinstance(child, (ast.For, ast.AsyncFor, ast.While)))

    for stmt in main.body:
        for node in [stmt] if isinstance(stmt, (ast.Return, ast.Break, ast.Continue)) else escapes(stmt, False):
            if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)) and not isinstance(node, ast.Return):
                continue
            word = type(node).__name__.lower()
            msg = (
                f"`{word}` in the training loop ends it early or skips the step; every one of the max_iters "
                "iterations must train (use if/else), and train returns after the loop"
            )
            out.append(Violation(rule, msg, node.lineno))
    if main.orelse:
        out.append(Violation(rule, "the training loop has an `else:` block; move it after the loop", main.lineno))
    return out


def check_training_loop(tree: ast.Module) -> list[Violation]:
    """One training loop, `for <step> in range(max_iters)` (or a name set only to max_iters and the
    TRAIN_MPS_MAX_ITERS override), no other loop inside it running backward, no break/continue/return in it."""
    return _training_loop_problems(tree)


def check_no_seed_fishing(tree: ast.Module) -> list[Violation]:
    """train runs once: it does not call train() (or itself), nothing calls train() at import, and no seed is
    set inside a loop (trying seeds and keeping the best)."""
    rule = "no-seed-fishing"
    out: list[Violation] = []
    loops = _loops(tree)
    train = loops["train"]
    if train is None:
        return []
    is_module = _module_objects(tree)
    for node in _walk_all(_reachable(tree, [train])):
        if isinstance(node, ast.Call) and (
            _is_name(node.func, "train")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "train" and is_module(node.func.value))
        ):
            msg = "train() is called from within train (repeated runs, keeping the best); train once"
            out.append(Violation(rule, msg, node.lineno))
    main_block = [
        n
        for n in tree.body
        if isinstance(n, ast.If) and isinstance(n.test, ast.Compare) and _is_name(n.test.left, "__name__")
    ]
    main_ids = {id(n) for n in _walk_all(main_block)}
    for node in _module_scope(tree):
        if isinstance(node, ast.Call) and _is_name(node.func, "train") and id(node) not in main_ids:
            msg = "train() is called at import; the harness calls it once: call it only under `if __name__ == ...`"
            out.append(Violation(rule, msg, node.lineno))
    by_id = {id(n): n for n in _walk_all(_reachable(tree, [train]))}
    flagged: set[int] = set()
    for loop in loops["all"]:
        for node_id in loops["reach"][id(loop)]:
            node = by_id.get(node_id)
            if isinstance(node, ast.Call) and _called_name(node) in SEEDING_CALLS and node_id not in flagged:
                flagged.add(node_id)
                msg = (
                    f"`{ast.unparse(node.func)}(...)` runs inside a loop (line {loop.lineno}): trying seeds and "
                    "keeping the best; seed once, before training"
                )
                out.append(Violation(rule, msg, node.lineno))
    return out


def check_full_batch(tree: ast.Module) -> list[Violation]:
    """The training batches keep batch_size x block_size: no `batch_size // 4`, `block_size - 8`, `x[:2]`,
    `x[::2]`, or a randint sampling another count than batch_size, in the training loop or what it calls."""
    rule = "full-batch"
    main = _loops(tree)["main"]
    if main is None:
        return []
    out: list[Violation] = []
    region = _reachable(tree, main.body)
    seen: set[int] = set()
    shrink_ops = (ast.FloorDiv, ast.Div, ast.Sub, ast.Mod, ast.RShift)
    for node in _walk_all(region):
        if id(node) in seen:
            continue
        seen.add(id(node))
        what = None
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.left, ast.Name)
            and node.left.id in ("batch_size", "block_size")
        ):
            if isinstance(node.op, shrink_ops):
                what = f"`{ast.unparse(node)}` shrinks {node.left.id}"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            sizes = [
                s for s in (node.left, node.right) if isinstance(s, ast.Name) and s.id in ("batch_size", "block_size")
            ]
            factors = [s for s in (node.left, node.right) if isinstance(s, ast.Constant) and isinstance(s.value, float)]
            if sizes and factors and factors[0].value < 1:
                what = f"`{ast.unparse(node)}` shrinks {sizes[0].id}"
        elif (
            isinstance(node, ast.Call)
            and _called_name(node) in ("min",)
            and any(_is_name(a, "batch_size") or _is_name(a, "block_size") for a in node.args)
        ):
            what = f"`{ast.unparse(node)}` may cap the batch"
        elif isinstance(node, ast.Slice):
            bounds = [b for b in (node.lower, node.upper) if b is not None]
            if node.step is not None and not _is_int(node.step, 1):
                what = f"the slice step `{ast.unparse(node.step)}` drops rows of the batch"
            elif any(
                isinstance(c, ast.Constant) and type(c.value) is int and c.value not in (0, 1, -1)
                for b in bounds
                for c in ast.walk(b)
            ):
                what = f"the slice `{ast.unparse(node)}` cuts the batch to a constant size"
        elif isinstance(node, ast.Call) and _called_name(node) == "randint":
            sizes = [a for a in node.args if isinstance(a, (ast.Tuple, ast.List))]
            sizes += [k.value for k in node.keywords if k.arg == "size"]
            mentions_block = any(_is_name(n, "block_size") for a in node.args for n in ast.walk(a))
            if (
                mentions_block
                and sizes
                and not (
                    isinstance(sizes[0], (ast.Tuple, ast.List))
                    and sizes[0].elts
                    and _is_name(sizes[0].elts[0], "batch_size")
                )
            ):
                what = f"`{ast.unparse(node)}` samples another count than `(batch_size,)` windows"
        if what:
            msg = f"{what}; train on full (batch_size, block_size) batches: use the fixed names as they are"
            out.append(Violation(rule, msg, getattr(node, "lineno", None) or main.lineno))
    return out


def check_train_split(tree: ast.Module) -> list[Violation]:
    """The training batches come from the train split: the training loop (outside its eval gate) never names the
    val split, nothing it trains on is built from val (or train+val), and a split-picking sampler maps 'train'
    to train data."""
    rule = "train-split"
    loops = _loops(tree)
    main, train = loops["main"], loops["train"]
    if train is None:
        return []
    consts = _constants(tree)
    out: list[Violation] = []
    fix = "training batches must come from train.bin only; the val split is for the eval gate"
    if main is not None:
        backward_ids = {id(n) for n in _walk_all(_reachable(tree, [train])) if _is_backward_call(n)}

        def training_part(stmts: list[ast.stmt]) -> Iterator[ast.AST]:
            for stmt in stmts:
                if isinstance(stmt, ast.If) and _is_periodic(stmt.test):
                    reached = {id(n) for n in _walk_all(_reachable(tree, stmt.body))}
                    if not reached & backward_ids:  # an evaluation block, not training
                        yield from _own_nodes(stmt.orelse)
                        continue
                yield from _own_nodes([stmt])

        region = list(training_part(main.body))
        for node in region:
            if _val_reference(node, consts):
                msg = f"`{ast.unparse(node)}` in the training loop, outside the eval gate; {fix}"
                out.append(Violation(rule, msg, getattr(node, "lineno", main.lineno)))
        assignments = _assignments([train])
        functions = {
            n.name: n for n in _reachable(tree, [train]) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        todo = [n.id for n in region if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
        samplers = set(todo) & set(functions)  # functions the loop calls itself (get_batch), not their helpers
        traced: set[str] = set()
        reported: set[int] = set()
        while todo:
            name = todo.pop()
            if name in traced:
                continue
            traced.add(name)
            sources = [(value, stmt) for value, stmt in assignments.get(name, []) if value is not None]
            if name in samplers and functions[name] is not train:  # a sampler: what its 'train' side reads
                sources += [(stmt, stmt) for stmt in functions[name].body]
            for value, stmt in sources:
                for node in _train_side(value, consts):
                    if _val_reference(node, consts) and id(stmt) not in reported:
                        reported.add(id(stmt))
                        msg = (
                            f"`{name}`, used in the training loop, is built from the val split "
                            f"(`{ast.unparse(node)}`); {fix}"
                        )
                        out.append(Violation(rule, msg, getattr(stmt, "lineno", None)))
                    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                        todo.append(node.id)
    for node in ast.walk(tree):  # `data = val_data if split == 'train' else train_data`
        branches = _split_branches(node, consts)
        if branches is not None and any(_val_reference(n, consts) for n in _walk_all(branches[0])):
            msg = f"the 'train' branch of `{ast.unparse(node.test)}` picks the val split; {fix}"
            out.append(Violation(rule, msg, node.lineno))
    return out


def _split_branches(node: ast.AST, consts: dict[str, str]) -> tuple[list[ast.AST], list[ast.AST]] | None:
    """(train branch, val branch) of `A if split == 'train' else B` or `if split == 'val': ...`; else None."""
    if not isinstance(node, (ast.IfExp, ast.If)) or not isinstance(node.test, ast.Compare):
        return None
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
        return None
    split = _fold(test.left, consts) or _fold(test.comparators[0], consts)
    if split not in ("train", "val"):
        return None
    first = [node.body] if isinstance(node.body, ast.AST) else node.body
    second = [node.orelse] if isinstance(node.orelse, ast.AST) else node.orelse
    picks_train = (split == "train") == isinstance(test.ops[0], ast.Eq)
    return (first, second) if picks_train else (second, first)


def _train_side(node: ast.AST, consts: dict[str, str]) -> Iterator[ast.AST]:
    """`ast.walk(node)`, entering only the 'train' branch of split-picking tests (a sampler's val side is fine)."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        branches = _split_branches(current, consts)
        if branches is not None:
            todo.extend(branches[0])
        else:
            todo.extend(ast.iter_child_nodes(current))


def check_no_warm_start(tree: ast.Module) -> list[Violation]:
    """No weights loaded from disk or elsewhere in train or what it calls (torch.load, pickle.load,
    from_pretrained, torch.hub): every candidate trains from scratch."""
    rule = "no-warm-start"
    train = _find_train(tree)
    nodes = _reachable(tree, [train]) if train is not None else [tree]
    return _load_calls(tree, nodes, rule, "train or what it calls")


def _load_calls(tree: ast.Module, nodes: list[ast.AST], rule: str, where: str) -> list[Violation]:
    loaders = {
        local
        for local, full in _imports(tree).items()
        if full.split(".")[0] in LOAD_MODULES and full.split(".")[-1] in ("load", "loads", "load_file")
    }
    load_roots = _aliases_of(tree, *LOAD_MODULES) | set(LOAD_MODULES)
    out: list[Violation] = []
    seen: set[int] = set()
    for node in _walk_all(nodes):
        if not isinstance(node, ast.Call) or id(node) in seen:
            continue
        seen.add(id(node))
        func = node.func
        loads = isinstance(func, ast.Name) and func.id in loaders
        loads |= isinstance(func, ast.Attribute) and (
            func.attr == "from_pretrained"
            or (func.attr in ("load", "loads", "load_file") and _root_name(func) in load_roots)
        )
        if loads:
            msg = f"`{ast.unparse(func)}(...)` in {where} loads saved state (a warm start); train from scratch"
            out.append(Violation(rule, msg, node.lineno))
    return out


def _is_time_call(node: ast.AST, tree: ast.Module) -> bool:
    """`time.time()` with `time` the module of `import time` (other bindings of `time` are no-clock-patch's)."""
    return (
        isinstance(node, ast.Call)
        and not node.args
        and not node.keywords
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "time"
        and _is_name(node.func.value, "time")
    )


def _is_infinity(node: ast.AST) -> bool:
    """float('inf'), math.inf / np.inf / torch.inf, None, a constant >= 1000, or torch.tensor/float of one."""
    if isinstance(node, ast.Constant):
        return node.value is None or (type(node.value) in (int, float) and node.value >= 1000)
    if isinstance(node, ast.Attribute):
        return node.attr == "inf"
    if isinstance(node, ast.Call) and len(node.args) == 1:
        arg = node.args[0]
        if _is_name(node.func, "float") and _const_str(arg) is not None:
            return _const_str(arg).strip().lower().lstrip("+") in ("inf", "infinity")
        return _called_name(node) in ("float", "tensor", "as_tensor", "float64", "float32") and _is_infinity(arg)
    return False


_MEASURE_METHODS = ("item", "detach", "cpu", "clone", "float", "double", "mean", "to", "squeeze", "tolist")


def _is_measured(value: ast.AST, assignments: dict, seen: frozenset = frozenset()) -> bool:
    """Does `value` come straight from a loss computation (a call on non-constant arguments, then .item(),
    float(), min/max with best_vloss, indexing), with no arithmetic or constant on the way?"""
    if isinstance(value, ast.Name):
        if value.id == "best_vloss" or value.id in seen:
            return True
        bound = assignments.get(value.id, [])
        return bool(bound) and all(v is not None and _is_measured(v, assignments, seen | {value.id}) for v, _ in bound)
    if isinstance(value, ast.Call):
        func = value.func
        if isinstance(func, ast.Name) and func.id in ("min", "max"):
            return bool(value.args) and all(_is_measured(a, assignments, seen) for a in value.args)
        if isinstance(func, ast.Name) and func.id == "float":
            return len(value.args) == 1 and _is_measured(value.args[0], assignments, seen)
        if isinstance(func, ast.Attribute) and func.attr in _MEASURE_METHODS:
            return _is_measured(func.value, assignments, seen)
        if isinstance(func, ast.Name) and func.id in BUILTIN_NAMES:
            return False  # abs, round, sum, int...: arithmetic on the loss
        return not (value.args and all(isinstance(a, ast.Constant) for a in value.args))  # torch.tensor(2.5)
    if isinstance(value, (ast.Subscript, ast.Attribute)):
        return _is_measured(value.value, assignments, seen)
    if isinstance(value, ast.IfExp):
        return _is_measured(value.body, assignments, seen) and _is_measured(value.orelse, assignments, seen)
    return False


def _inside(node: ast.AST, block: ast.AST) -> bool:
    return block.lineno <= node.lineno <= block.end_lineno


def check_honest_results(tree: ast.Module) -> list[Violation]:
    """best_vloss starts at infinity and is only lowered, in the eval gate, to measured val losses (no scaling,
    offsets, constants, replacement after the loop); elapsed_min is `(time.time() - <clock>) / 60` once, after
    the loop, with the clock started on train()'s first line and never reset; no float subclasses."""
    rule = "honest-results"
    train = _find_train(tree)
    if train is None:
        return []
    out: list[Violation] = []
    numeric = ("float", "int", "complex", "float64", "float32", "floating", "Tensor")

    def is_numeric(base: ast.AST) -> bool:
        return (isinstance(base, ast.Name) and base.id in numeric) or (
            isinstance(base, ast.Attribute) and base.attr in numeric
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(is_numeric(b) for b in node.bases):
            msg = f"class `{node.name}` subclasses a number type, which can change comparisons and float(); remove it"
            out.append(Violation(rule, msg, node.lineno))
        elif isinstance(node, ast.Call) and _is_name(node.func, "type") and len(node.args) == 3:
            if isinstance(node.args[1], ast.Tuple) and any(is_numeric(b) for b in node.args[1].elts):
                out.append(Violation(rule, "`type(...)` builds a number subclass; remove it", node.lineno))

    body = train.body[1:] if _const_str(getattr(train.body[0], "value", None)) is not None else train.body
    first = body[0] if body else None
    clock = None
    if (
        isinstance(first, ast.Assign)
        and len(first.targets) == 1
        and isinstance(first.targets[0], ast.Name)
        and _is_time_call(first.value, tree)
    ):
        clock = first.targets[0].id
    else:
        msg = "train()'s first statement must start the clock, `t_start = time.time()`, so loading the data counts"
        out.append(Violation(rule, msg, getattr(first, "lineno", train.lineno)))
    assignments = _assignments([train])
    if clock is not None:
        for _, stmt in assignments[clock][1:]:
            msg = f"the clock `{clock}` is reset; it starts once, on train()'s first line: use another name"
            out.append(Violation(rule, msg, stmt.lineno))

    main = _loops(tree)["main"]
    elapsed = assignments.get("elapsed_min", [])
    expected = f"elapsed_min = (time.time() - {clock or 't_start'}) / 60"
    for value, stmt in elapsed:
        ok = (
            value is not None
            and isinstance(value, ast.BinOp)
            and isinstance(value.op, ast.Div)
            and isinstance(value.right, ast.Constant)
            and value.right.value in (60, 60.0)
            and isinstance(value.left, ast.BinOp)
            and isinstance(value.left.op, ast.Sub)
            and _is_time_call(value.left.left, tree)
            and clock is not None
            and _is_name(value.left.right, clock)
        )
        if not ok:
            got = ast.unparse(stmt).splitlines()[0]
            out.append(Violation(rule, f"`{got}`; elapsed_min must be `{expected}`", getattr(stmt, "lineno", None)))
        elif main is not None and stmt.lineno <= main.end_lineno:
            msg = f"elapsed_min is computed before the training loop ends; compute `{expected}` once, after it"
            out.append(Violation(rule, msg, stmt.lineno))
    if len(elapsed) > 1:
        msg = f"elapsed_min is set {len(elapsed)} times; set it once, `{expected}`, after the training loop"
        out.append(Violation(rule, msg, getattr(elapsed[1][1], "lineno", None)))

    gates = []
    if main is not None:
        gates = [s for s in _direct_statements(main.body) if isinstance(s, ast.If) and _is_eval_gate(s.test)]
    for value, stmt in assignments.get("best_vloss", []):
        line = getattr(stmt, "lineno", None)
        text = ast.unparse(stmt).splitlines()[0]
        if value is None:
            msg = f"`{text}` changes best_vloss other than by assignment; assign it measured val losses only"
            out.append(Violation(rule, msg, line))
        elif main is None:
            if not (_is_infinity(value) or _is_measured(value, assignments)):
                out.append(Violation(rule, f"`{text}`; best_vloss may only hold measured val losses", line))
        elif stmt.lineno < main.lineno:
            if not _is_infinity(value):
                msg = f"`{text}`; best_vloss must start at infinity (`best_vloss = float('inf')`)"
                out.append(Violation(rule, msg, line))
        elif stmt.lineno > main.end_lineno:
            msg = f"`{text}` replaces best_vloss after the training loop; return the best measured val loss as is"
            out.append(Violation(rule, msg, line))
        elif gates and not any(_inside(stmt, gate) for gate in gates):  # no gate: eval-interval's
            msg = f"`{text}` sets best_vloss outside the eval gate; update it only where the val loss is measured"
            out.append(Violation(rule, msg, line))
        elif not _is_measured(value, assignments):
            msg = (
                f"`{text}`: best_vloss must be a measured val loss (`min(best_vloss, vloss)`), not scaled, "
                "offset or constant"
            )
            out.append(Violation(rule, msg, line))
    return out


def check_no_harness_patch(tree: ast.Module) -> list[Violation]:
    """model.py does not reach into the harness: no import of train_mps/__main__, no sys.modules, no frame or
    gc walking (which could rewrite train_mps's fixed names or results)."""
    rule = "no-harness-patch"
    fix = "model.py may only define the model"
    consts = _constants(tree)
    is_sys_modules = _sys_modules(tree)
    out: list[Violation] = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in HARNESS_MODULES for m in modules):
                what = f"`{ast.unparse(node)}` imports the training script"
        elif is_sys_modules(node):
            what = f"`{ast.unparse(node)}` reaches other modules (train_mps) at run time"
        elif isinstance(node, ast.Call) and _called_name(node) in ("import_module", "__import__") and node.args:
            if _fold(node.args[0], consts) in HARNESS_MODULES:
                what = f"`{ast.unparse(node)}` imports the training script"
        elif isinstance(node, ast.Attribute) and node.attr in FRAME_ATTRS and node.attr != "stack":
            what = f"`{ast.unparse(node)}` walks the call stack into the caller's variables"
        elif isinstance(node, ast.Attribute) and node.attr in ("get_referrers", "get_objects", "get_referents"):
            what = f"`{ast.unparse(node)}` walks every live object"
        if what:
            out.append(Violation(rule, f"{what}; {fix}", node.lineno))
    return out


def check_model_no_warm_start(tree: ast.Module) -> list[Violation]:
    """model.py loads no saved weights (torch.load, pickle.load, from_pretrained, torch.hub)."""
    return _load_calls(tree, [tree], "no-warm-start", "model.py")


RULES: tuple[Rule, ...] = (
    Rule(
        "fixed-block",
        "fixed names set once (module level, or locals at the top of train) to their values, never rebound",
        check_fixed_block,
    ),
    Rule("no-env-write", "no writes to os.environ / putenv / unsetenv, in any spelling", check_no_env_write),
    Rule("train-callable", "module-level `def train` callable with no arguments", check_train_callable),
    Rule("train-return", "train ends with and only returns `best_vloss, elapsed_min`", check_train_return),
    Rule(
        "eval-interval",
        "val evaluation gated by `<step> % eval_interval == 0`, directly in the training loop",
        check_eval_interval,
    ),
    Rule("data-files", "'train.bin' and 'val.bin' are referenced", check_data_files),
    Rule("device-ctx-used", "`device` and `ctx` are read by train or what it calls", check_device_ctx_used),
    Rule("sizes-used", "batch/block sizes, model sizes and max_iters are read by train", check_sizes_used),
    Rule("no-dynamic-code", "no exec/eval/compile/__import__, computed imports or code loaders", check_no_dynamic_code),
    Rule(
        "no-builtins-patch", "no builtins patching, no builtin names rebound (module, train)", check_no_builtins_patch
    ),
    Rule("no-clock-patch", "the time module untouched, `time` only from `import time`, no mock", check_no_clock_patch),
    Rule("no-seed-patch", "seeding / random functions of modules not replaced", check_no_seed_patch),
    Rule("training-loop", "one `for <step> in range(max_iters)` loop; no break/continue/return", check_training_loop),
    Rule(
        "no-seed-fishing",
        "train runs once: no train() calls in train or at import, no seeds in loops",
        check_no_seed_fishing,
    ),
    Rule("full-batch", "training batches keep (batch_size, block_size): no shrinking or slicing", check_full_batch),
    Rule("train-split", "training batches come from the train split, never val", check_train_split),
    Rule(
        "no-warm-start", "no torch.load / pickle.load / from_pretrained in train or what it calls", check_no_warm_start
    ),
    Rule(
        "honest-results",
        "best_vloss = min of measured val losses; elapsed_min = (time.time() - first-line clock) / 60",
        check_honest_results,
    ),
)

MODEL_RULES: tuple[Rule, ...] = (
    Rule("no-env-write", "no writes to os.environ / putenv / unsetenv, in any spelling", check_no_env_write),
    Rule("no-dynamic-code", "no exec/eval/compile/__import__, computed imports or code loaders", check_no_dynamic_code),
    Rule("no-builtins-patch", "no builtins / __builtins__ (patching)", _builtins_patches),
    Rule("no-clock-patch", "the time module untouched, `time` only from `import time`, no mock", check_no_clock_patch),
    Rule("no-seed-patch", "seeding / random functions of modules not replaced", check_no_seed_patch),
    Rule("no-harness-patch", "no train_mps import, sys.modules, frame or gc walking", check_no_harness_patch),
    Rule("no-warm-start", "no torch.load / pickle.load / from_pretrained", check_model_no_warm_start),
)


def _run(rules: tuple[Rule, ...], source: str, filename: str) -> list[Violation]:
    tree = ast.parse(source, filename=filename)
    violations = {v: None for rule in rules for v in rule.check(tree)}  # dict: drop exact duplicates, keep order
    return sorted(violations, key=lambda v: (v.line or 0, v.rule))


def layout(source: str) -> str:
    """Where a train_mps.py `source` keeps the fixed block: "module" (odegpt's module-level block), "train" (the
    fixed locals at the top of train(), the DreamTeam original's) or "none". Raises SyntaxError if it does not
    parse."""
    return _layout(ast.parse(source))[0]


def check(source: str, filename: str = "<candidate>") -> list[Violation]:
    """All violations of `RULES` in a train_mps.py `source`, sorted by line. Raises SyntaxError if it does not
    parse."""
    return _run(RULES, source, filename)


def check_model(source: str, filename: str = "<model>") -> list[Violation]:
    """All violations of `MODEL_RULES` in a model.py `source`, sorted by line. Raises SyntaxError if it does not
    parse."""
    return _run(MODEL_RULES, source, filename)


# --- command line --------------------------------------------------------------------------------------


def _targets(paths: list[Path]) -> list[tuple[Path, str, bool]]:
    """(file, "train" | "model", required) for each PATH: a folder's two files, a train_mps.py and the model.py
    beside it (if any), or a model.py."""
    out: list[tuple[Path, str, bool]] = []
    for path in paths:
        if path.is_dir():
            out += [(path / "train_mps.py", "train", True), (path / "model.py", "model", True)]
        elif path.name == "model.py":
            out.append((path, "model", True))
        else:
            out.append((path, "train", True))
            beside = path.parent / "model.py"
            if beside.is_file():
                out.append((beside, "model", False))
    unique: dict[Path, tuple[Path, str, bool]] = {}
    for target in out:
        key = target[0].resolve()
        if key not in unique or target[2]:
            unique[key] = target
    return list(unique.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="*", type=Path, help="candidate folder, train_mps.py or model.py")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--list-rules", action="store_true", help="print the rules and exit")
    args = parser.parse_args(argv)
    if args.list_rules:
        for title, rules in (("train_mps.py", RULES), ("model.py", MODEL_RULES)):
            print(f"{title}:")
            for rule in rules:
                print(f"  {rule.id:18} {rule.summary}")
        return 0
    if not args.path:
        parser.error("PATH is required")

    rule_ids = [r.id for r in RULES] + [f"model:{r.id}" for r in MODEL_RULES]
    found: list[tuple[Path, Violation]] = []
    error = None
    checked: list[Path] = []
    for path, kind, _ in _targets(args.path):
        try:
            source = path.read_text(encoding="utf-8")
            violations = (check if kind == "train" else check_model)(source, filename=str(path))
        except (OSError, UnicodeDecodeError) as e:
            error = f"cannot read {path}: {e}"
            break
        except SyntaxError as e:
            error = f"{path}:{e.lineno}: syntax error: {e.msg}"
            break
        checked.append(path)
        found += [(path, v) for v in violations]
    if args.json:
        result = {"path": str(args.path[0]), "files": [str(p) for p in checked], "ok": not error and not found}
        result |= {"error": error, "rules": rule_ids}
        result["violations"] = [] if error else [{**asdict(v), "path": str(p)} for p, v in found]
        print(json.dumps(result, indent=2))
    if error:
        if not args.json:
            print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.json:
        for path, v in found:
            print(f"{path}:{v.line if v.line is not None else '-'}: {v.rule}: {v.message}")
        if not found:
            files = " and ".join(str(p) for p in checked)
            print(
                f"OK {files}: all {len(RULES)} train_mps.py rules hold"
                + (
                    f" and all {len(MODEL_RULES)} model.py rules"
                    if any(k == "model" for _, k, _ in _targets(args.path))
                    else ""
                )
            )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
