"""ftmix command line: thin typer commands that parse, call one stage and render."""

from __future__ import annotations

import sys
import warnings

from typer import exceptions as typer_errors
from typer._click import exceptions as click_errors  # typer 0.29 vendors click

from ftmix.cli.app import app


def main(argv: list[str] | None = None) -> None:
    """Entry point. Usage errors (bad flag values, unknown options) become one line and exit 2."""
    # the libraries' deprecation notices are for their developers, not for ftmix's users
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if hasattr(sys.stdout, "reconfigure") and not sys.stdout.isatty():
        sys.stdout.reconfigure(line_buffering=True)  # piped: each line as it is written, not all at the end
    try:
        result = app(args=argv, standalone_mode=False)
    except click_errors.NoArgsIsHelpError:
        sys.exit(0)  # help was printed
    except click_errors.ClickException as exc:
        sys.stderr.write(f"error: {exc.format_message()}\n")
        sys.exit(2)
    except typer_errors.Abort:
        sys.stderr.write("error: aborted\n")
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


__all__ = ["app", "main"]
