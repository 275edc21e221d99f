"""The subcommands of ``snugfit``, one module each.

Each module has ``NAME`` (the word on the command line), ``add_parser(subparsers)``
(its arguments) and ``run(args) -> int | None`` (the exit status; None: 0).
"""

from snugfit.app.commands import check, demo, export, lr_find, plan, predict, train

# By name, in the order ``snugfit --help`` lists them.
COMMANDS = {c.NAME: c for c in (train, plan, check, predict, export, lr_find, demo)}
