"""``anyorder`` command line: one module per command group, imported here and registered on one parser.

Configuration follows the official repos: a preset or YAML file plus dotted overrides,
``anyorder demo --model randar train.steps=500 model.depth=2``.
"""

from __future__ import annotations

import argparse
import sys

from anyorder.cli.app import add_app_command
from anyorder.cli.edit import add_editing_commands
from anyorder.cli.eval import add_eval_command
from anyorder.cli.sample import add_sample_command
from anyorder.cli.tokenize import add_tokenize_command
from anyorder.cli.train import add_run_commands

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyorder", description="Any-order autoregressive image generation "
                                     "(RAR and RandAR)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_commands(sub)
    add_sample_command(sub)
    add_editing_commands(sub)
    add_app_command(sub)
    add_eval_command(sub)
    add_tokenize_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"anyorder {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
