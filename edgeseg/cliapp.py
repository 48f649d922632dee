"""The one way the four command lines (edgeseg, train, convert, benchmarks) are made."""

from __future__ import annotations

import typer


def make_app(help: str | None = None, **options) -> typer.Typer:
    """A Typer app with the settings all four share: plain help text (no ``<bool>`` after plain flags,
    help and defaults wrapped rather than cut off in narrow terminals or logs), no shell-completion
    commands, and no tracebacks (errors are one line, see `edgeseg.errors.reports_errors`)."""
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None, help=help,
                       **options)


def run_app(app: typer.Typer, args: list[str] | None = None) -> int:
    """Run `app` as a command line and return its exit code. A usage mistake (unknown option, a value
    outside its choices, a missing argument) is one line on stderr, ``error: ...; see 'PROG --help'``,
    exit code 2; help (``--help``, or no arguments where the app asks for them) prints as usual."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, standalone_mode=False)
    except _NoArgsIsHelpError as exc:
        typer.echo(exc.format_message())
        return 0
    except _UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else command.name
        message = " ".join(exc.format_message().split()).rstrip(".").replace("Value error, ", "")
        typer.echo(f"error: {message}; see '{where} --help'", err=True)
        return exc.exit_code
    except _ClickException as exc:
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    return result if isinstance(result, int) else 0


try:  # typer >= 0.22 carries its own copy of click
    from typer._click.exceptions import ClickException as _ClickException
    from typer._click.exceptions import NoArgsIsHelpError as _NoArgsIsHelpError
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException as _ClickException
    from click.exceptions import NoArgsIsHelpError as _NoArgsIsHelpError
    from click.exceptions import UsageError as _UsageError
