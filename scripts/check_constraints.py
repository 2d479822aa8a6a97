"""Static check that a candidate `train_mps.py` keeps the harness rules.

The harness copies a candidate's `model.py` and `train_mps.py` into a folder, imports `train_mps`, calls
`train()` with no arguments and ranks candidates by the returned `(best_vloss, elapsed_min)`. A ranking is
only fair if every candidate trains under the same fixed block and reports the same quantities, so this
script reads the candidate with `ast` (it never imports or executes it) and checks the rules in `RULES`.

Usage:
    python scripts/check_constraints.py PATH [--json]
    python scripts/check_constraints.py --list-rules

Exit status: 0 when every rule holds (one OK line), 1 when some rule is violated (one line per violation:
`PATH:LINE: RULE-ID: explanation`), 2 when PATH is missing, unreadable or not valid Python.

In-process: `check(source) -> list[Violation]` (raises SyntaxError on invalid source).

Adding a rule is writing one `check_*(tree) -> list[Violation]` function and one `Rule(...)` row in `RULES`.
The checks are static, so they catch the direct ways of breaking a rule (rebinding a fixed name in any scope,
writing `globals()["max_iters"]`, `setattr(module, "max_iters", ...)`, writing `os.environ`), not code that
builds names at run time (`exec`, `getattr` with computed strings); review stays the last line of defence.
"""

from __future__ import annotations

import argparse
import ast
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
EVAL_INTERVAL = FIXED_VALUES["eval_interval"]
EXPECTED_RETURN = ("best_vloss", "elapsed_min")
DATA_FILES = ("train.bin", "val.bin")
DEVICE_NAMES = ("device", "ctx")
# eval_interval is not here: `% 100` is an accepted spelling of the evaluation gate.
SIZE_NAMES = ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "max_iters")


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


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_int(node: ast.AST, value: int) -> bool:
    # `type(...) is int` so that True (== 1) and 8.0 (== 8) do not pass for an int setting.
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value == value


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


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


def _train_defs(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [n for n in tree.body if isinstance(n, functions) and n.name == "train"]


def _find_train(tree: ast.Module) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    defs = _train_defs(tree)
    return defs[-1] if defs else None  # the last definition is the one the import leaves bound


def _reachable(tree: ast.Module, roots: Iterable[ast.AST]) -> list[ast.AST]:
    """`roots` plus every module-level function or class they name, transitively (what they may call)."""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    defs = {n.name: n for n in tree.body if isinstance(n, kinds)}
    seen: list[ast.AST] = []
    seen_ids: set[int] = set()
    todo = list(roots)
    while todo:
        node = todo.pop()
        if id(node) in seen_ids:
            continue
        seen_ids.add(id(node))
        seen.append(node)
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id in defs:
                todo.append(defs[sub.id])
    return seen


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


def _bindings(tree: ast.Module) -> Iterator[tuple[str, ast.AST, str]]:
    """Every place a plain name is bound or unbound, in any scope: (name, node, how)."""
    for node in ast.walk(tree):
        for name, how in _bound_names(node):
            yield name, node, how


def _is_namespace(node: ast.AST) -> bool:
    """`globals()`, `vars(...)`, `locals()` or `X.__dict__`: a dict whose string keys are variable names."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in ("globals", "vars", "locals")
    return isinstance(node, ast.Attribute) and node.attr == "__dict__"


def _is_sys_modules_entry(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "modules"
        and _is_name(node.value.value, "sys")
    )


_DICT_MUTATORS = ("update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__")


def _string_writes(tree: ast.Module) -> Iterator[tuple[str, ast.AST, str]]:
    """Writes that name a fixed setting through a string or a module object, where the name is literal."""
    modules = {name for name, _, how in _bindings(tree) if how == "bound by an import"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            if _is_namespace(node.value) and _const_str(node.slice) in FIXED_NAMES:
                yield _const_str(node.slice), node, "written through globals()/vars()/__dict__"
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            on_module = _is_sys_modules_entry(node.value) or (
                isinstance(node.value, ast.Name) and node.value.id in modules
            )
            if node.attr in FIXED_NAMES and on_module:
                yield node.attr, node, "written as a module attribute"
        elif not isinstance(node, ast.Call):
            continue
        elif isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            if len(node.args) >= 2 and _const_str(node.args[1]) in FIXED_NAMES:
                yield _const_str(node.args[1]), node, f"written by {node.func.id}()"
        elif isinstance(node.func, ast.Attribute) and node.func.attr in _DICT_MUTATORS:
            if _is_namespace(node.func.value):
                keys = [_const_str(a) for a in node.args] + [k.arg for k in node.keywords]
                for arg in node.args:
                    if isinstance(arg, ast.Dict):
                        keys += [_const_str(k) for k in arg.keys]
                for key in keys:
                    if key in FIXED_NAMES:
                        yield key, node, f"written by globals().{node.func.attr}()"


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


# --- rules ---------------------------------------------------------------------------------------------


def check_fixed_block(tree: ast.Module) -> list[Violation]:
    """Each fixed name is assigned once, at module level, to its fixed value, and never rebound anywhere."""
    rule = "fixed-block"
    out: list[Violation] = []
    definitions: dict[str, ast.Assign | ast.AnnAssign] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target = stmt.target
        else:
            continue
        if isinstance(target, ast.Name) and target.id in FIXED_NAMES and target.id not in definitions:
            definitions[target.id] = stmt
    definition_targets = {
        id(stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target) for stmt in definitions.values()
    }

    for name in FIXED_NAMES:
        stmt = definitions.get(name)
        if stmt is None:
            out.append(Violation(rule, f"`{name} = {_fixed_value_text(name)}` missing at module level"))
        elif not _has_fixed_value(name, stmt.value):
            got = ast.unparse(stmt.value)
            msg = f"`{name} = {got}`; the fixed block requires `{name} = {_fixed_value_text(name)}`"
            out.append(Violation(rule, msg, stmt.lineno))

    for name, node, how in _bindings(tree):
        if name in FIXED_NAMES and id(node) not in definition_targets:
            msg = f"fixed name `{name}` {how}; it may only be set once, in the fixed block"
            out.append(Violation(rule, msg, getattr(node, "lineno", None)))
    for name, node, how in _string_writes(tree):
        msg = f"fixed name `{name}` {how}; it may only be set once, in the fixed block"
        out.append(Violation(rule, msg, node.lineno))
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


def _is_environ(node: ast.AST, aliases: set[str]) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr in ("environ", "environb")
    return isinstance(node, ast.Name) and node.id in ("environ", "environb", *aliases)


def check_no_env_write(tree: ast.Module) -> list[Violation]:
    """No write to the process environment: it could set TRAIN_MPS_* and shorten the candidate's own run."""
    rule = "no-env-write"
    aliases: set[str] = set()
    for node in ast.walk(tree):  # `env = os.environ` makes `env[...] = ...` a write too
        if isinstance(node, ast.Assign) and _is_environ(node.value, set()):
            aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}

    out: list[Violation] = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            if _is_environ(node.value, aliases):
                what = f"`{ast.unparse(node)}` is written"
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            if node.attr in ("environ", "environb"):
                what = f"`{ast.unparse(node)}` is replaced"
        elif isinstance(node, ast.AugAssign) and _is_environ(node.target, aliases):
            what = f"`{ast.unparse(node.target)}` is updated in place"
        elif isinstance(node, ast.Call):
            func = node.func
            mutates = isinstance(func, ast.Attribute) and func.attr in _DICT_MUTATORS
            if mutates and _is_environ(func.value, aliases):
                what = f"`{ast.unparse(func)}(...)` is called"
            elif isinstance(func, (ast.Attribute, ast.Name)):
                called = func.attr if isinstance(func, ast.Attribute) else func.id
                if called in ("putenv", "unsetenv"):
                    what = f"`{ast.unparse(func)}(...)` is called"
        if what:
            msg = f"{what}; candidates may read the environment but never write it (TRAIN_MPS_* overrides)"
            out.append(Violation(rule, msg, node.lineno))
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


def _is_modulo_zero(node: ast.AST) -> bool:
    """`<name> % eval_interval == 0` or `<name> % 100 == 0`, either side of the `==`."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return False
    left, right = node.left, node.comparators[0]
    if _is_int(left, 0):
        left, right = right, left
    return (
        _is_int(right, 0)
        and isinstance(left, ast.BinOp)
        and isinstance(left.op, ast.Mod)
        and isinstance(left.left, ast.Name)
        and (_is_name(left.right, "eval_interval") or _is_int(left.right, EVAL_INTERVAL))
    )


def _is_eval_gate(test: ast.AST) -> bool:
    # `or` may widen the gate (e.g. also evaluate on the last step); `and` could switch it off.
    operands = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or) else [test]
    return any(_is_modulo_zero(operand) for operand in operands)


def _mentions_val(node: ast.AST) -> bool:
    """The string 'val' / 'val.bin', or a name or attribute with a `val` word (`val_data`, `self.val`)."""
    if _const_str(node) in ("val", "val.bin"):
        return True
    word = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "val" in word.lower().split("_")


def check_eval_interval(tree: ast.Module) -> list[Violation]:
    """train evaluates on the val split under `if <step> % eval_interval == 0:` (or `% 100`)."""
    rule = "eval-interval"
    train = _find_train(tree)
    if train is None:
        return []
    gates = [n for n in ast.walk(train) if isinstance(n, ast.If) and _is_eval_gate(n.test)]
    if not gates:
        msg = "no `if <step> % eval_interval == 0:` in train; evaluation must run every 100 iterations"
        return [Violation(rule, msg, train.lineno)]
    for gate in gates:
        if any(_mentions_val(n) for n in _walk_all(_reachable(tree, gate.body))):
            return []
    msg = "the `% eval_interval == 0` block never touches the val split ('val', val_*), nor what it calls"
    return [Violation(rule, msg, gates[0].lineno)]


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


RULES: tuple[Rule, ...] = (
    Rule(
        "fixed-block",
        "fixed names set once at module level to their fixed values, never rebound",
        check_fixed_block,
    ),
    Rule("no-env-write", "no writes to os.environ / putenv / unsetenv", check_no_env_write),
    Rule("train-callable", "module-level `def train` callable with no arguments", check_train_callable),
    Rule("train-return", "train ends with and only returns `best_vloss, elapsed_min`", check_train_return),
    Rule("eval-interval", "val evaluation gated by `<step> % eval_interval == 0`", check_eval_interval),
    Rule("data-files", "'train.bin' and 'val.bin' are referenced", check_data_files),
    Rule("device-ctx-used", "`device` and `ctx` are read by train or what it calls", check_device_ctx_used),
    Rule("sizes-used", "batch/block sizes, model sizes and max_iters are read by train", check_sizes_used),
)


def check(source: str, filename: str = "<candidate>") -> list[Violation]:
    """All violations of `RULES` in `source`, sorted by line. Raises SyntaxError if it does not parse."""
    tree = ast.parse(source, filename=filename)
    violations = [v for rule in RULES for v in rule.check(tree)]
    return sorted(violations, key=lambda v: (v.line or 0, v.rule))


# --- command line --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, help="candidate train_mps.py")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--list-rules", action="store_true", help="print the rules and exit")
    args = parser.parse_args(argv)
    if args.list_rules:
        for rule in RULES:
            print(f"{rule.id:16} {rule.summary}")
        return 0
    if args.path is None:
        parser.error("PATH is required")

    def report(ok: bool, violations: list[Violation], error: str | None = None) -> None:
        if args.json:
            result = {"path": str(args.path), "ok": ok, "error": error, "rules": [r.id for r in RULES]}
            print(json.dumps({**result, "violations": [asdict(v) for v in violations]}, indent=2))
        elif error:
            print(f"error: {error}", file=sys.stderr)

    try:
        source = args.path.read_text(encoding="utf-8")
        violations = check(source, filename=str(args.path))
    except (OSError, UnicodeDecodeError) as e:
        report(False, [], f"cannot read {args.path}: {e}")
        return 2
    except SyntaxError as e:
        report(False, [], f"{args.path}:{e.lineno}: syntax error: {e.msg}")
        return 2
    if args.json:
        report(not violations, violations)
    elif violations:
        for v in violations:
            print(f"{args.path}:{v.line if v.line is not None else '-'}: {v.rule}: {v.message}")
    else:
        print(f"OK {args.path}: all {len(RULES)} constraint rules hold")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
