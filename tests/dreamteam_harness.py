"""The public DreamTeam harness (kevinbdsouza/DreamTeam, src/dreamteam/main.py), reimplemented for the tests
from what it does, in its two versions. One parser serves the in-process tests and the replayed harness
scripts, which embed its source.

- current (commit df31f78): runs as `python main.py` from src/dreamteam, imports that folder's `train_mps` and
  `model` at startup, then copies dreamteam_generations/gen_1/baseline/{train_mps,model}.py over them (the
  repository has no such folder: whoever starts it makes one), cuts each file out of the LLM reply with a regex on a ```python block whose first line names the file, accepts a
  block only if its first line starts with `import` and it compiles (an invalid or empty block becomes
  the current file; both invalid: the candidate is ignored), writes the files to
  dreamteam_generations/gen_N/<name>/, loads train_mps.py with spec_from_file_location and calls train()
  in the same process, candidate after candidate; any exception scores (inf, inf).
- older (commit 985a9ac): runs as `python -m src.dreamteam.main` from the repository root (its relative imports
  need the package), reads the starting files from src/dreamteam/, cuts the reply into `file_name.py:`
  sections (a reply without one: warning "returned no files", the best files so far train again), writes
  results/gen_N/NN_<agent>/, puts that folder first on sys.path, imports and reloads `train_mps`, takes
  float(best_vloss.item()), ranks by best_vloss + 0.01 * elapsed_min, and deletes `train_mps` and `model`
  from sys.modules after each candidate. It catches no exception from a candidate: one ends the run.
"""

import inspect
import re
import textwrap

FENCE = "`" * 3  # written this way so that no file here holds a fence the harness's regex would stop at
FILES = ("train_mps.py", "model.py")

# The DreamTeam original layout of train_mps.py, written here from its description (not copied): the fixed values
# are locals at the top of train(), after the clock; the data is read from a literal path, relative as in the
# starting file (ORIGINAL_LAYOUT) or joined onto a `data_dir` literal of the user's machine as in gen_1's candidates
# (ORIGINAL_LAYOUT_DATA_DIR); device 'mps' is used directly; one val batch every 100 iterations (`% 100`); no seed;
# best_vloss is returned as the 0-d tensor of the best single-batch val loss. The attack tests edit its lines.
ORIGINAL_LAYOUT = """\
import torch, os, time, math, pickle, numpy as np
from contextlib import nullcontext
from model import GPT, GPTConfig
import time


def train():
    # the clock starts first (fixed)
    t_start = time.time()

    # sizes (fixed)
    batch_size = 8
    block_size = 64
    n_layer = 4
    n_head = 4
    n_embd = 32
    max_iters = 10001

    # both splits in memory (fixed)
    train_data = torch.from_numpy(np.memmap('data/shakespeare/train.bin', dtype=np.uint16, mode='r')).to(torch.long)
    val_data = torch.from_numpy(np.memmap('data/shakespeare/val.bin', dtype=np.uint16, mode='r')).to(torch.long)

    # not to be changed
    device = 'mps'
    ctx = nullcontext()

    # free to change below
    learning_rate = 3e-4

    def get_batch(split):
        data = train_data if split == 'train' else val_data
        ix = torch.randint(len(data) - block_size, (batch_size,), device=device)
        x = torch.stack([data[i:i + block_size] for i in ix]).to(device)
        y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix]).to(device)
        return x, y

    config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                       vocab_size=50304, bias=False, dropout=0.0)
    model = GPT(config).to(device)
    optim = model.configure_optimizers(weight_decay=0.1, learning_rate=learning_rate,
                                       betas=(0.9, 0.95), device_type='mps')

    best_vloss = np.inf
    for it in range(max_iters):
        model.train()
        X, Y = get_batch('train')
        with ctx:
            _, loss = model(X, Y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)

        # one val batch every 100 iterations (fixed)
        if it % 100 == 0:
            model.eval()
            with torch.no_grad():
                Xv, Yv = get_batch('val')
                _, vloss = model(Xv, Yv)
            print(f'{it}: train {loss.item():.3f} val {vloss.item():.3f}')
            if vloss < best_vloss:
                best_vloss = vloss

    # the clock stops here (fixed)
    elapsed_min = (time.time() - t_start) / 60
    print(f"trained in {elapsed_min:.1f} min")

    return best_vloss, elapsed_min


if __name__ == "__main__":
    train()
"""
ORIGINAL_DATA_LINES = (
    "    train_data = torch.from_numpy(np.memmap('data/shakespeare/train.bin', dtype=np.uint16, mode='r')).to(torch.long)\n"
    "    val_data = torch.from_numpy(np.memmap('data/shakespeare/val.bin', dtype=np.uint16, mode='r')).to(torch.long)\n"
)
assert ORIGINAL_DATA_LINES in ORIGINAL_LAYOUT
ORIGINAL_LAYOUT_DATA_DIR = ORIGINAL_LAYOUT.replace(
    ORIGINAL_DATA_LINES,
    "    data_dir = '/Users/someone/DreamTeam/data'\n"
    "    train_data = torch.from_numpy(np.memmap(os.path.join(data_dir, 'shakespeare/train.bin'), dtype=np.uint16, mode='r')).to(torch.long)\n"
    "    val_data = torch.from_numpy(np.memmap(os.path.join(data_dir, 'shakespeare/val.bin'), dtype=np.uint16, mode='r')).to(torch.long)\n",
)


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


def older_sections(reply: str) -> dict:
    """The older driver's cut: each line that ends in `.py:` (stripped) opens the section of that file name, up to
    the next such line; a section's text is its lines, right-stripped, plus one newline. No section: {}."""
    sections, name = {}, None
    for line in reply.splitlines():
        if line.strip().endswith(".py:"):
            name = line.strip()[: -len(":")]
            sections[name] = []  # a name given twice: the later section wins
        elif name is not None:
            sections[name].append(line)
    return {n: "\n".join(lines).rstrip() + "\n" for n, lines in sections.items()}


def older_reply(files: dict) -> str:
    """A reply in the older driver's format: `file_name.py:` on its own line, then the whole file, unfenced."""
    return "".join(f"{name}:\n{code}\n" for name, code in files.items())


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

# main.py's first step, after its imports: the baseline folder's files over its own (FileNotFoundError without them).
_BASELINE_COPY = "import shutil\nfor n in FILES:\n    shutil.copyfile(f'dreamteam_generations/gen_1/baseline/{n}', n)\n"
assert CURRENT_MAIN.count("\noriginals = ") == 1
CURRENT_MAIN_FROM_BASELINE = CURRENT_MAIN.replace("\noriginals = ", "\n" + _BASELINE_COPY + "originals = ")

_OLDER_EVALUATE = textwrap.dedent(
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
    """
)

OLDER_MAIN = _OLDER_EVALUATE + textwrap.dedent(
    """
    results = {}
    for cand in sys.argv[1:]:
        vloss, elapsed = evaluate_candidate(cand)
        results[cand] = {"scores": [vloss, vloss + 0.01 * elapsed]}
    print("RESULTS " + json.dumps(results))
    """
)

# The older driver from the reply on: argv are reply files, one agent each (the file's stem), in generation 0.
OLDER_DRIVER = (
    _OLDER_EVALUATE
    + f"\nfrom pathlib import Path\n\nFILES = {FILES!r}\n\n"
    + inspect.getsource(older_sections)
    + textwrap.dedent(
        """
        best = {n: Path("src/dreamteam", n).read_text() for n in FILES}
        best_fit, results = float("inf"), {}
        for i, reply_path in enumerate(sys.argv[1:]):
            agent = Path(reply_path).stem
            files = older_sections(Path(reply_path).read_text())
            if files:
                files = {**{n: best[n] for n in FILES}, **files}
            else:
                print(f"WARNING - Agent {agent} returned no files", flush=True)
                files = best
            cand = Path("results", "gen_0", f"{i:02d}_{agent}")
            cand.mkdir(parents=True, exist_ok=True)
            for n, text in files.items():
                (cand / n).write_text(text)
            vloss, elapsed = evaluate_candidate(cand)
            fit = vloss + 0.01 * elapsed
            if fit < best_fit:
                best, best_fit = files, fit
            results[agent] = {"scores": [vloss, fit]}
        print("RESULTS " + json.dumps(results))
        """
    )
)
