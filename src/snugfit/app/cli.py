"""The ``snugfit`` command line: train, check, plan, predict, export, lr-find, demo.

Bad input ends with one line, ``snugfit: error: <what is wrong>``, and exit
status 2; no traceback. So does a disk fault (no space left, permission denied,
read-only filesystem: `snugfit.saving.disk`). Ctrl-C ends with status 130; during ``train`` it first
saves a checkpoint and prints the command that resumes the run.

Each subcommand is a module of `snugfit.app.commands` (its arguments and what
it runs); the options they share are in `snugfit.app.arguments`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from snugfit.app.arguments import Parser
from snugfit.app.commands import COMMANDS
from snugfit.errors import SnugfitError


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="snugfit",
        description="Fine-tune pretrained image classifiers that fit your machine.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return p


def setup_logging() -> None:
    """Log lines as ``snugfit: <message>``, each once.

    huggingface_hub prints its own warnings (a retry, a slow request) through its own
    handler; kept from reaching ours too, each is printed once.
    """
    logging.basicConfig(format="snugfit: %(message)s", level=logging.INFO)
    logging.getLogger("huggingface_hub").propagate = False


def main(argv=None) -> int:
    setup_logging()
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(words)
    args.argv = words  # what train's Ctrl-C message repeats to resume the run
    try:
        return COMMANDS[args.command].run(args) or 0
    except SnugfitError as e:
        print(f"snugfit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snugfit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from snugfit.saving.disk import disk_fault

        line = disk_fault(e)
        if line is None:
            raise
        print(f"snugfit: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
