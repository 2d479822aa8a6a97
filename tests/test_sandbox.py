"""odegpt_eval.sandbox: which sandbox runs candidate code, and what a command inside bubblewrap can and cannot do.

On Linux the sandbox must be there: `make test` installs bubblewrap (as root, from Debian) and CI runs these and
the attack tests (test_sandbox_attacks.py) for real; a machine without it fails here, naming the fix, rather than
skipping them.
"""

import json
import os
import subprocess
import sys

import pytest

from odegpt_eval import sandbox as sb

LINUX = sys.platform == "linux"


def test_linux_runs_candidates_in_bubblewrap():
    if not LINUX:
        pytest.skip(f"no sandbox on {sys.platform}: runs there are marked untrusted (README)")
    box, why = sb.choose("auto")
    assert why is None and box.name == "bubblewrap" and box.trusted, (
        f"no working sandbox on this Linux machine ({why}): {sb.INSTALL_HINT}"
    )


def test_without_bwrap_auto_says_why_and_a_named_sandbox_is_refused(monkeypatch):
    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    monkeypatch.setattr(sb.sys, "platform", "linux")
    box, why = sb.choose("auto")
    assert box.name == "none" and not box.trusted and "apt-get install bubblewrap" in why
    with pytest.raises(sb.SandboxError, match="apt-get install bubblewrap"):
        sb.choose("bubblewrap")
    with pytest.raises(sb.SandboxError, match="one of auto, bubblewrap, none"):
        sb.choose("docker")
    assert sb.choose("none")[0].name == "none"


def test_a_bwrap_that_cannot_start_is_refused_naming_the_fix(monkeypatch, tmp_path):
    """bwrap installed where user namespaces are off (a container's seccomp profile, Ubuntu's AppArmor rule): `auto`
    runs nothing as trusted, and a named sandbox is an error saying what to change."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sb.shutil, "which", lambda name: str(fake))
    monkeypatch.setattr(sb.sys, "platform", "linux")
    box, why = sb.choose("auto")
    assert box.name == "none" and not box.trusted
    assert "No permissions to create new namespace" in why and "seccomp=unconfined" in why
    with pytest.raises(sb.SandboxError, match="user namespaces"):
        sb.choose("bubblewrap")


def test_the_benchmark_refuses_to_run_without_the_sandbox_it_was_asked_for(
    monkeypatch, synthetic_data, tmp_path, capsys
):
    from odegpt_eval import benchmark

    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    monkeypatch.setattr(sb.sys, "platform", "linux")
    argv = ["--configs", "canonical", "--seeds", "0", "--max-iters", "1", "--data-dir", str(synthetic_data)]
    assert benchmark.main([*argv, "--out", str(tmp_path / "out"), "--sandbox", "bubblewrap"]) == 2
    assert "apt-get install bubblewrap" in capsys.readouterr().err and not (tmp_path / "out").exists()


PROBE = r"""
import json, os, socket, sys
def can(f):
    try:
        f()
        return True
    except OSError as e:
        return type(e).__name__
seen = {
    "read_hidden": can(lambda: open(sys.argv[1]).read()),
    "write_read_only": can(lambda: open(os.path.join(sys.argv[2], "x"), "w").write("x")),
    "write_writable": can(lambda: open(os.path.join(sys.argv[3], "x"), "w").write("x")),
    "write_tmp": can(lambda: open(sys.argv[4], "w").write("x")),
    "network": can(lambda: socket.create_connection(("1.1.1.1", 53), timeout=2)),
    "pid": os.getpid(),
    "env": sorted(os.environ),
    "root": sorted(os.listdir("/")),
}
print(json.dumps(seen))
"""


@pytest.mark.skipif(not LINUX, reason="bubblewrap is Linux only")
def test_a_command_in_bubblewrap_sees_only_what_it_is_given(tmp_path):
    hidden, ro, rw = tmp_path / "hidden.txt", tmp_path / "ro", tmp_path / "rw"
    hidden.write_text("secret")
    ro.mkdir()
    rw.mkdir()
    box = sb.Confinement(
        read_only=(str(ro), *sb.python_paths()), writable=(str(rw),), env=tuple({"ONLY": "this"}.items())
    )
    private = f"/tmp/odegpt-probe-{os.getpid()}"  # the sandbox's own /tmp
    argv = [sys.executable, "-S", "-c", PROBE, str(hidden), str(ro), str(rw), private]
    proc = sb.Bubblewrap().start(argv, box, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    seen = json.loads(out)
    assert seen["read_hidden"] == "FileNotFoundError" and seen["write_read_only"] == "OSError"  # EROFS
    assert seen["write_writable"] is True and (rw / "x").read_text() == "x"
    assert seen["write_tmp"] is True and not os.path.exists(private)
    assert seen["network"] is not True  # no network namespace of the host's
    assert seen["pid"] < 10  # a PID namespace of its own
    assert set(seen["env"]) - {"PWD", "LC_CTYPE"} == {
        "ONLY"
    }  # nothing of the runner's (bwrap sets PWD, Python LC_CTYPE)
    bound = [str(ro), str(rw), *sb.python_paths()]
    allowed = {"bin", "sbin", "lib", "lib32", "lib64", "usr", "etc", "sys", "proc", "dev", "tmp"}
    assert set(seen["root"]) <= allowed | {p.split("/")[1] for p in bound}, seen["root"]


def test_without_a_sandbox_the_home_and_temporary_folders_are_still_fresh(tmp_path):
    env = sb.base_env()
    box = sb.Confinement(read_only=(), env=tuple(env.items()), cwd=str(tmp_path))
    argv = [sys.executable, "-S", "-c", "import os; print(os.environ['HOME'], os.environ['TMPDIR'])"]
    proc = sb.NoSandbox().start(argv, box, stdout=subprocess.PIPE, text=True)
    home, tmp = proc.communicate(timeout=60)[0].split()
    assert home.startswith(proc.scratch) and tmp.startswith(proc.scratch) and os.path.isdir(home)
    sb.cleanup(proc)
    assert not os.path.exists(proc.scratch)
