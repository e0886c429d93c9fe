"""``poets``: retrain and label from the shell, and run the service.

Sub-commands register themselves from :mod:`poets.cli.engine_commands` (work done in this
process with the engine), :mod:`poets.cli.service_commands` (the API and the worker) and
:mod:`poets.cli.migrate_command` (a local deployment into a bucket and Redis).
"""

import argparse
import logging
import sys
from typing import List, Optional

from poets.engine.errors import PoetsError
from poets.engine.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    from poets.cli import engine_commands, migrate_command, service_commands

    parser = argparse.ArgumentParser(
        prog="poets", description="Image labelling and retraining: TensorFlow for Poets as a service."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    engine_commands.register(commands)
    service_commands.register(commands)
    migrate_command.register(commands)
    settings = commands.add_parser("settings", help="print every setting, its variable and value")
    settings.set_defaults(run=_print_settings)
    return parser


def _print_settings(args: argparse.Namespace, settings: Settings) -> int:
    """Every setting with the value in effect (environment over default)."""
    for variable, value, meaning in settings.effective():
        print("{:32} {:24} {}".format(variable, value or "-", meaning))
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        sys.exit(2)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "tensorflow", False) and not getattr(args, "url", None):
        from poets.engine.runtime import import_tensorflow_quietly

        import_tensorflow_quietly(verbose=settings.log_level.upper() == "DEBUG")
    try:
        sys.exit(args.run(args, settings))
    except PoetsError as exc:
        print("error: {}".format(exc.detail), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
