"""What every `radbridge` command shares: the app, the --root option, one-line errors, the actor."""

from __future__ import annotations

import getpass
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import typer

from engine.core.errors import ConfigError, RadbridgeError

app = typer.Typer(
    help="radbridge: HL7/FHIR integration engine for AI radiology.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ROOT = typer.Option(Path("."), "--root", "-r", help="Project folder (holds config/, channels/, mappings/).")
T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"radbridge: error: {message}", err=True)
    raise typer.Exit(code)


def guard(action: Callable[[], T]) -> T:
    """One-line errors for what the engine raises on purpose; config errors list every diagnostic."""
    try:
        return action()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    except RadbridgeError as exc:
        fail(str(exc))
    except LookupError as exc:
        fail(str(exc.args[0]) if exc.args else "not found")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def actor() -> str:
    return f"user:{getpass.getuser()}"


def context(root: Path):  # type: ignore[no-untyped-def]
    from engine.runtime.context import open_context

    return guard(lambda: open_context(root))
