"""The scoring child: runs inside its own sandbox, loads the candidate's model.py and the trained model (nothing
else of the candidate's, no data), and answers scoring calls: a batch of input prefixes in, the last position's
logits over the vocabulary out. It never sees a target: the runner, which alone holds them, normalises the logits
and computes the cross-entropy (scoring.py).

    python -E -s -B score_child.py MODEL_PY WEIGHTS MODULE_NAME DEVICE THREADS REQUEST_FD RESPONSE_FD

On the CPU each group of calls is served by a fresh fork of the loaded model: the fork reads its requests itself,
answers them and exits at the runner's `release` frame, so no state of one group reaches the next. The runner makes
a group of one set of windows at increasing prefix lengths, so whatever a fork keeps from one call of its group is
part of the next call's own input (scoring.py). The loaded process sets one thread before loading, because a fork
of a process whose OpenMP pool has started deadlocks, and each fork sets THREADS. CUDA cannot be forked: there one
process serves every call, and only the runner's audit (scoring.py) checks that no state carried over.
"""

import os
import sys

try:  # as odegpt_eval.children.score_child (the runner reads its helpers) or as a script in the sandbox
    from . import wire
except ImportError:  # beside this file: python puts the script's folder first on sys.path
    import wire

END = 3  # the exit status of a fork that read the runner's last frame


def load(model_py: str, weights: str, module_name: str, device: str):
    """The candidate's model.py under the module name its pickled classes name, then the pickled model."""
    import importlib.util

    import torch

    folder = os.path.dirname(os.path.abspath(model_py))
    if module_name != "model" and os.path.isfile(os.path.join(folder, module_name + ".py")):
        # the pickled classes live in another file of the candidate's folder (levers.py's LeverGPT, which extends
        # model.py through train_mps): model.py as `model`, then that module from the folder
        spec = importlib.util.spec_from_file_location("model", model_py)
        sys.modules["model"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["model"])
        sys.path.insert(0, folder)
        importlib.import_module(module_name)
    else:
        spec = importlib.util.spec_from_file_location(module_name, model_py)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # pickle finds the classes by this name
        sys.modules.setdefault("model", module)
        spec.loader.exec_module(module)
    model = torch.load(weights, map_location=device, weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the exported model is a {type(model).__qualname__}, not a torch.nn.Module")
    return model.eval()


def answer(model, request: tuple, device: str) -> tuple[dict, bytes]:
    """One call: model(idx) on the prefixes, no targets; the last position's logits as float32 bytes."""
    import numpy as np
    import torch

    header, payload = request
    rows, length = int(header["rows"]), int(header["length"])
    idx = torch.from_numpy(np.frombuffer(payload, dtype=np.int64).copy()).view(rows, length).to(device)
    with torch.no_grad():
        out = model(idx)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[0] != rows:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model(idx) returned logits of shape {shape}, not (b, 1 or t, vocab)")
    last = logits[:, -1, :].float().cpu().contiguous()  # (b, vocab)
    return {"kind": "logits", "call": header.get("call"), "shape": list(last.shape)}, last.numpy().tobytes()


def serve_forked(model, device: str, threads: int, requests: int, responses: int) -> None:
    import torch

    while True:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                torch.set_num_threads(threads)
                while True:
                    request = wire.read_frame(requests)
                    if request is None or request[0].get("kind") == "end":
                        os._exit(END)
                    if request[0].get("kind") == "release":
                        break
                    wire.write_frame(responses, *answer(model, request, device))
            except BaseException as e:  # the runner records it as the scoring error
                wire.write_frame(responses, {"kind": "error", "error": f"{type(e).__name__}: {e}"})
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == END:
            return
        if code not in (0, 1):
            wire.write_frame(
                responses, {"kind": "error", "error": f"a scoring call's process ended with status {code}"}
            )


def serve_in_process(model, device: str, requests: int, responses: int) -> None:
    while True:
        request = wire.read_frame(requests)
        if request is None or request[0].get("kind") == "end":
            return
        if request[0].get("kind") == "release":
            continue
        try:
            wire.write_frame(responses, *answer(model, request, device))
        except Exception as e:
            wire.write_frame(responses, {"kind": "error", "error": f"{type(e).__name__}: {e}"})


def main(argv: list[str]) -> int:
    model_py, weights, module_name, device = argv[:4]
    threads, requests, responses = (int(a) for a in argv[4:7])
    import torch

    torch.set_num_threads(1)  # no OpenMP pool in the process that forks (see above)
    if device == "cuda" and not torch.cuda.is_available():  # trained on a CUDA worker, scored on a driver without
        device = "cpu"
    try:
        model = load(model_py, weights, module_name, device)
    except BaseException as e:
        wire.write_frame(responses, {"kind": "error", "error": f"could not load the model: {type(e).__name__}: {e}"})
        return 1
    forked = device == "cpu" and hasattr(os, "fork")
    wire.write_frame(responses, {"kind": "ready", "class": type(model).__qualname__, "forked": forked})
    if forked:
        serve_forked(model, device, threads, requests, responses)
    else:
        torch.set_num_threads(threads)
        serve_in_process(model, device, requests, responses)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
