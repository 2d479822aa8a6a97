"""Where candidate code runs: a sandbox is a plug-in that turns a command and what it may see into the command
that runs it so confined (Inspect's sandbox seam). Two here:

  bubblewrap   Linux. bwrap (Debian package `bubblewrap`) builds a fresh mount namespace whose root is an empty
               tmpfs and binds into it only what the run may see, read-only unless named writable; new user, PID,
               IPC, network, UTS and cgroup namespaces; a new session; a cleared environment; killed with its
               parent. The PID namespace is what ends every descendant with the run: when the sandbox's first
               process exits, the kernel kills everything left in the namespace, a process that left its group or
               daemonized included. Picked over `unshare` because bwrap is a tool built for exactly this (the
               allow-list of mounts, the tmpfs root, --die-with-parent) where unshare would need a home-made mount
               script, and it runs unprivileged (user namespaces) and as root (it then drops every capability).
  none         no confinement: the candidate can read whatever the user can. Chosen only where no sandbox is
               available (macOS, a Linux without bwrap or user namespaces), said loudly, and the report marks
               every such run's figures untrusted. Home, cache and temporary folders are still fresh per run.

Both give the command the same environment (cleared, then the variables the run needs), so an honest candidate
trains the same under either.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILDREN = Path(__file__).resolve().parent / "children"  # the files that run inside (stdlib + torch only)
SANDBOXES = ("auto", "bubblewrap", "none")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; `make test` does it as root)"
USERNS_HINT = (  # what bwrap needs from the kernel, and what turns it off
    "bwrap needs user namespaces: on the host, sysctl kernel.unprivileged_userns_clone=1 (Debian) or "
    "kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu 23.10+), user.max_user_namespaces > 0; in a Docker "
    "container, run it with --security-opt seccomp=unconfined --security-opt apparmor=unconfined (and "
    "systempaths=unconfined where /proc cannot be mounted; or --privileged)"
)
# System folders a Python process needs (libc, the dynamic loader, certificates are not needed); /etc only in part.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group", "hosts")


class SandboxError(RuntimeError):
    """A sandbox that was asked for is not usable here; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Confinement:
    """What one sandboxed command may see. Paths keep their names inside (so records and logs read the same).

    read_only / writable: paths bound at the same place; fresh_tmp: a private /tmp (with home and cache)
    that exists for this command only, else the whole tree is read-only; cwd: the working directory;
    env: the environment, complete (nothing is inherited); placed: (path inside, host path) for paths whose files
    live elsewhere on this host (a Ray worker's copy of the driver's run folder, seen inside at the driver's path).
    """

    read_only: tuple[str, ...]
    writable: tuple[str, ...] = ()
    cwd: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    fresh_tmp: bool = True
    placed: tuple[tuple[str, str], ...] = ()

    def host(self, path: str) -> str:
        return dict(self.placed).get(path, path)


def python_paths() -> list[str]:
    """The Python environment this process runs in, to be bound read-only: the venv as it is named, the interpreter
    it points at (resolved), and any site-packages folder outside both."""
    paths = {sys.prefix, sys.exec_prefix}
    paths |= {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    paths.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    paths |= {os.path.realpath(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return minimal(p for p in paths if os.path.isdir(p))


def minimal(paths) -> list[str]:
    """Paths with every one that lies inside another dropped (binding the outer one binds it)."""
    out: list[str] = []
    for p in sorted({str(Path(p)) for p in paths}, key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return sorted(out)


INSIDE_HOME = "/tmp/home"  # in the sandbox's private /tmp


def base_env() -> dict[str, str]:
    """The variables every sandboxed command gets: a PATH, a fresh home, cache and temporary folder, no .pyc."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": INSIDE_HOME,
        "TMPDIR": "/tmp",
        "XDG_CACHE_HOME": f"{INSIDE_HOME}/.cache",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


class Sandbox:
    """The seam: `start` runs argv confined and returns the Popen; `describe` is what a run records."""

    name = "?"
    trusted = False

    def available(self) -> str | None:
        """None when it can run here, else why not."""
        return None

    def describe(self) -> dict:
        return {"name": self.name, "trusted": self.trusted}

    def start(self, argv: list[str], box: Confinement, **popen) -> subprocess.Popen:
        raise NotImplementedError


class Bubblewrap(Sandbox):
    name = "bubblewrap"
    trusted = True

    def __init__(self, bwrap: str | None = None):
        self.bwrap = bwrap or shutil.which("bwrap")

    def available(self) -> str | None:
        if self.bwrap is None:
            return f"no bwrap on PATH: {INSTALL_HINT}"
        box = Confinement(read_only=tuple(python_paths()), fresh_tmp=False)
        try:
            proc = subprocess.run(
                self.command([sys.executable, "-S", "-c", "pass"], box), capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as e:
            return f"bwrap could not start: {e}"
        if proc.returncode != 0:
            return f"bwrap failed here ({proc.stderr.strip()[:300]}): {USERNS_HINT}"
        return None

    def describe(self) -> dict:
        version = None
        if self.bwrap:
            try:
                version = subprocess.run(
                    [self.bwrap, "--version"], capture_output=True, text=True, timeout=30
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                pass
        return {**super().describe(), "version": version}

    def command(self, argv: list[str], box: Confinement) -> list[str]:
        cmd = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-all", "--proc", "/proc", "--dev", "/dev"]
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                cmd += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                cmd += ["--ro-bind", d, d]
        for f in ETC_FILES:
            if os.path.exists(f"/etc/{f}"):
                cmd += ["--ro-bind", f"/etc/{f}", f"/etc/{f}"]
        cmd += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]  # core counts (cpuinfo)
        for dev in sorted(Path("/dev").glob("nvidia*")):  # CUDA workers
            cmd += ["--dev-bind", str(dev), str(dev)]
        if box.fresh_tmp:  # the home and cache folders live in it (INSIDE_HOME)
            cmd += ["--tmpfs", "/tmp", "--dir", INSIDE_HOME, "--dir", f"{INSIDE_HOME}/.cache"]
        for p in minimal(box.read_only):
            cmd += ["--ro-bind", box.host(p), p]
        for p in box.writable:
            cmd += ["--bind", box.host(p), p]
        if box.cwd not in ("/", *box.read_only, *box.writable):
            cmd += ["--dir", box.cwd]
        if not box.fresh_tmp:
            cmd += ["--remount-ro", "/"]
        cmd += ["--chdir", box.cwd, "--clearenv"]
        for k, v in box.env:
            cmd += ["--setenv", k, v]
        return [*cmd, "--", *argv]

    def start(self, argv: list[str], box: Confinement, **popen) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv, box), **popen)


class NoSandbox(Sandbox):
    """Runs the command as it is. Its fresh home, cache and temporary folder live under a folder made per command
    and removed with it (`cleanup`); nothing else is confined."""

    name = "none"
    trusted = False

    def start(self, argv: list[str], box: Confinement, **popen) -> subprocess.Popen:
        if box.placed:
            raise SandboxError("without a sandbox a run's files must be at the paths it names (placed is not empty)")
        env = dict(box.env)
        scratch = tempfile.mkdtemp(prefix="odegpt-run-")
        for k in ("HOME", "TMPDIR", "XDG_CACHE_HOME"):
            if env.get(k, "").startswith("/tmp"):
                env[k] = scratch + env[k][len("/tmp") :]
                os.makedirs(env[k], exist_ok=True)
        proc = subprocess.Popen(argv, env=env, cwd=box.cwd, **popen)
        proc.scratch = scratch  # removed by cleanup() once the process has ended
        return proc


def cleanup(proc: subprocess.Popen) -> None:
    """What a sandbox made for one command and left outside it (NoSandbox's scratch folder)."""
    scratch = getattr(proc, "scratch", None)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


def choose(name: str = "auto") -> tuple[Sandbox, str | None]:
    """The sandbox to run under and, where it is `none`, why (for the loud warning). `auto`: bubblewrap where it
    works, else none. A sandbox asked for by name that cannot run here is an error naming the fix."""
    if name not in SANDBOXES:
        raise SandboxError(f"unknown sandbox {name!r}; one of {', '.join(SANDBOXES)}")
    if name == "none":
        return NoSandbox(), "--sandbox none was asked for"
    if sys.platform != "linux":
        if name == "bubblewrap":
            raise SandboxError(f"bubblewrap runs on Linux only, not {sys.platform}; use --sandbox none (untrusted)")
        return NoSandbox(), f"no sandbox on {sys.platform}: candidate code runs unconfined (see the README)"
    bwrap = Bubblewrap()
    why = bwrap.available()
    if why is None:
        return bwrap, None
    if name == "bubblewrap":
        raise SandboxError(why)
    return NoSandbox(), why
