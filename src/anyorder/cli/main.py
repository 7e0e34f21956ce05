"""``anyorder`` command line: one module per command group, imported here and registered on one parser.

Configuration follows the official repos: a preset or YAML file plus dotted overrides,
``anyorder demo --model randar train.steps=500 model.depth=2``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

from anyorder.cli.app import add_app_command
from anyorder.cli.edit import add_editing_commands
from anyorder.cli.eval import add_eval_command
from anyorder.cli.sample import add_sample_command
from anyorder.cli.tokenize import add_tokenize_command
from anyorder.cli.train import add_run_commands
from anyorder.cli.tune import add_tune_command
from anyorder.io.outputs import describe_os_error
from anyorder.models import FAMILIES

__all__ = ["main", "build_parser", "parse_args"]

_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=.*", re.DOTALL)  # section.key=value


def build_parser() -> argparse.ArgumentParser:
    families = ", ".join(spec.display_name for spec in FAMILIES.values())
    parser = argparse.ArgumentParser(prog="anyorder", description=f"Any-order autoregressive image generation "
                                     f"({families})")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_commands(sub)
    add_sample_command(sub)
    add_editing_commands(sub)
    add_app_command(sub)
    add_eval_command(sub)
    add_tune_command(sub)
    add_tokenize_command(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, except that a command with dotted ``overrides`` takes them anywhere on the line:
    argparse gives a ``nargs="*"`` positional only its first run of words, so ``train a=1 --quiet b=2`` left
    ``b=2`` unrecognised. The overrides keep their order on the command line (the last of one key wins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    if not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    unknown = [x for x in extra if not _OVERRIDE.fullmatch(x)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    left = Counter([*args.overrides, *extra])
    ordered = []
    for word in argv:  # the command line's order
        if left[word] > 0:
            ordered.append(word)
            left[word] -= 1
    args.overrides = ordered
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        return int(args.func(args) or 0)
    except OSError as e:  # a full disk, a read-only folder, a missing file: one line naming the path
        print(f"anyorder {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        if isinstance(e.__context__, OSError) and "inline_container" in str(e):  # torch.save on a full disk
            print(f"anyorder {args.command}: error: {describe_os_error(e.__context__)} (while torch.save "
                  f"wrote a file)", file=sys.stderr)
        else:
            print(f"anyorder {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
