"""The ``asyndbt`` command line. Subcommands: ``info``; more arrive with the optimizer."""

from __future__ import annotations

import argparse
import json
import platform
import sys


def _info(_args) -> int:
    import jax
    import optax

    from . import __version__

    print(
        json.dumps(
            {
                "asyndbt_jax": __version__,
                "jax_version": jax.__version__,
                "optax_version": optax.__version__,
                "python": platform.python_version(),
                "device": str(jax.devices()[0]),
                "backend": jax.default_backend(),
            },
            indent=2,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="asyndbt",
        description="Asynchronous distributed bilevel tuning of LLM prompts (AsynDBT) in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"asyndbt_jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions and the JAX device as JSON")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
