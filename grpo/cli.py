"""`grpo` command line: train, eval, upcycle, models.

Only argparse and the config modules load at start-up (no torch / vLLM), so
`grpo --help` and `grpo train --help` answer instantly. Heavy imports happen
inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from grpo.errors import GrpoError


def _train_epilog() -> str:
    from grpo.config_io import describe_fields

    lines = ["config fields (set in YAML or as key=value overrides):"]
    for key, tp, default, doc in describe_fields():
        lines.append(f"  {key} ({tp}, default {default})")
        lines += textwrap.wrap(doc, 76, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _parser(with_field_docs: bool) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="grpo", description="GRPO post-training for MoE and dense LMs.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    tr = sub.add_parser(
        "train", help="run a GRPO recipe from a YAML config",
        epilog=_train_epilog() if with_field_docs else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("config", nargs="?", help="recipe YAML (see recipes/configs/)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo.beta=0.04")
    tr.add_argument("--num-processes", type=int, default=1, help="data-parallel training processes (torchrun)")

    ev = sub.add_parser("eval", help="evaluate a model on a held-out task set")
    ev.add_argument("--model", required=True, help="model spec (folder, .gguf, smollm2-135m[-moe], tiny-*)")
    ev.add_argument("--task", required=True, help="data source, e.g. reasoning_gym:basic_arithmetic or a .jsonl")
    ev.add_argument("--config", help="optional recipe YAML for rewards/prompt settings")
    ev.add_argument("--n", type=int, default=200, help="number of held-out problems")
    ev.add_argument("--k", type=int, default=1, help="samples per problem (pass@k uses them)")
    ev.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) if k=1 else 1.0")
    ev.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ev.add_argument("--seed", type=int, default=1234)

    up = sub.add_parser("upcycle", help="turn a Llama-family dense model into an MoE (experts = FFN copies)")
    up.add_argument("--model", required=True, help="dense model spec")
    up.add_argument("--experts", type=int, default=4)
    up.add_argument("--top-k", type=int, default=2)
    up.add_argument("--style", default="mixtral", choices=["mixtral", "qwen2_moe"],
                    help="mixtral, or qwen2_moe (with a shared expert)")
    up.add_argument("--out", required=True, help="output folder")
    up.add_argument("--seed", type=int, default=0, help="router initialisation seed")

    sub.add_parser("models", help="list embedded and cached models")
    return ap


def _cmd_train(args) -> int:
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides, args.config = [args.config, *args.overrides], None  # overrides only, no YAML
    if args.num_processes > 1:
        from grpo.distributed import launch_torchrun

        return launch_torchrun(args.num_processes, [args.config or "", *args.overrides])
    from grpo.config_io import load_config

    cfg = load_config(args.config, args.overrides)
    # command -> recipe, spelled out: the CLI is the one grpo module above recipes/ (test_layering.py)
    from recipes.train_grpo import main as train_main

    train_main(cfg)
    return 0


def _cmd_eval(args) -> int:
    from grpo.evaluate import eval_cli

    return eval_cli(args)


def _cmd_upcycle(args) -> int:
    from grpo.models.loader import resolve_model
    from grpo.models.upcycle import upcycle

    out = upcycle(resolve_model(args.model), args.out, args.experts, args.top_k, args.style, args.seed)
    print(f"wrote {args.style} MoE ({args.experts} experts, top-{args.top_k}) to {out}")
    return 0


def _cmd_models(args) -> int:
    from grpo.models.registry import describe_models

    print(describe_models())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Field docs are only built when `train --help` is asked for.
    wants_train_help = len(argv) >= 1 and argv[0] == "train" and ("-h" in argv or "--help" in argv)
    args = _parser(with_field_docs=wants_train_help).parse_args(argv)
    handlers = {"train": _cmd_train, "eval": _cmd_eval, "upcycle": _cmd_upcycle, "models": _cmd_models}
    try:
        return handlers[args.cmd](args)
    except GrpoError as e:  # a user-fixable problem: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
