"""The public DreamTeam harness (kevinbdsouza/DreamTeam, src/dreamteam/main.py), reimplemented for the tests
from what it does, in its two versions. One parser serves the in-process tests and the replayed harness
scripts, which embed its source.

- current: runs from src/dreamteam, imports that folder's `train_mps` and `model` at startup, cuts each
  file out of the LLM reply with a regex on a ```python block whose first line names the file, accepts a
  block only if its first line starts with `import` and it compiles (an invalid or empty block becomes
  the current file; both invalid: the candidate is ignored), writes the files to
  dreamteam_generations/gen_N/<name>/, loads train_mps.py with spec_from_file_location and calls train()
  in the same process, candidate after candidate; any exception scores (inf, inf).
- older (commit 985a9ac): runs from the repository root, puts the candidate folder first on sys.path,
  imports and reloads `train_mps`, takes float(best_vloss.item()), ranks by best_vloss + 0.01 *
  elapsed_min, and deletes `train_mps` and `model` from sys.modules after each candidate.
"""

import inspect
import re
import textwrap

FENCE = "`" * 3  # written this way so that no file here holds a fence the harness's regex would stop at
FILES = ("train_mps.py", "model.py")


def harness_block(reply: str, name: str) -> str:
    """The first ```python block whose first line names the file, stripped; "" when there is none."""
    match = re.search(FENCE + r"python\s*" + re.escape(name) + r"\s*\n(.*?)" + FENCE, reply, re.DOTALL)
    return match.group(1).strip() if match else ""


def harness_accepts(code: str) -> bool:
    if not code.strip() or not code.strip().split("\n")[0].strip().startswith("import"):
        return False
    try:
        compile(code, "<string>", "exec")
    except SyntaxError:
        return False
    return True


def harness_files(reply: str, originals: dict):
    """What the harness writes for each file, or None when it ignores the candidate."""
    codes = {name: harness_block(reply, name) for name in FILES}
    if not any(harness_accepts(code) for code in codes.values()):
        return None
    return {name: code if harness_accepts(code) else originals[name] for name, code in codes.items()}


def seeds_reply(files: dict) -> str:
    """A reply in the seeds' output format: one python block per file, its first line naming it."""
    blocks = [f"{FENCE}python\n{name}\n{code}\n{FENCE}" for name, code in files.items()]
    return "Here are my changes.\n\n" + "\n\n".join(blocks) + "\n"


_PARSER = "\n\n".join(inspect.getsource(f) for f in (harness_block, harness_accepts, harness_files))

CURRENT_MAIN = (
    "import importlib.util, json, os, re, sys\n"
    "from train_mps import train  # as main.py: the base files, imported at startup\n"
    "from model import GPT, GPTConfig\n"
    f"FENCE = {FENCE!r}\nFILES = {FILES!r}\n\n"
    + _PARSER
    + "\n"
    + textwrap.dedent(
        """
        originals = {n: open(n).read() for n in FILES}
        results = {}
        for reply_path in sys.argv[1:]:
            name = os.path.splitext(os.path.basename(reply_path))[0]
            codes = harness_files(open(reply_path).read(), originals)
            if codes is None:
                results[name] = "ignored"
                continue
            cand = f"dreamteam_generations/gen_1/{name}"
            os.makedirs(cand, exist_ok=True)
            for n, c in codes.items():
                with open(f"{cand}/{n}", "w") as f:
                    f.write(c)
            try:
                spec = importlib.util.spec_from_file_location("temp_train_mps", f"{cand}/train_mps.py")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                best_vloss, elapsed_min = module.train()
            except Exception as e:
                print(f"  Error running training for {name}: {e!r}")
                best_vloss, elapsed_min = float("inf"), float("inf")
            types = [type(best_vloss).__name__, type(elapsed_min).__name__]
            results[name] = {"scores": [best_vloss, elapsed_min], "types": types}
        print("RESULTS " + json.dumps(results))
        """
    )
)

OLDER_MAIN = textwrap.dedent(
    """
    import importlib, json, sys

    def evaluate_candidate(cand_dir):
        sys.path.insert(0, str(cand_dir))
        try:
            import train_mps
            importlib.reload(train_mps)
            best_vloss, elapsed_min = train_mps.train()
            if hasattr(best_vloss, "item"):
                best_vloss = float(best_vloss.item())
        finally:
            sys.path.pop(0)
            if "train_mps" in sys.modules:
                del sys.modules["train_mps"]
            if "model" in sys.modules:
                del sys.modules["model"]
        return float(best_vloss), float(elapsed_min)

    results = {}
    for cand in sys.argv[1:]:
        vloss, elapsed = evaluate_candidate(cand)
        results[cand] = {"scores": [vloss, vloss + 0.01 * elapsed]}
    print("RESULTS " + json.dumps(results))
    """
)
