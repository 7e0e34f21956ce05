"""Applications: the ``anyorder`` command line (one module per command group, ``main`` builds the parser)."""

from anyorder.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
