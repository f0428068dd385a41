"""The ``cryopose`` command: one module per command under ``cryopose.cli``.

Each command module defines a click command named ``command``; it is imported only when
that command runs, so ``cryopose --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from cryopose import __version__
from cryopose.errors import UserError
from cryopose.jobs.allocator import tune_allocator

# command name -> (module under cryopose.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "Run the whole pipeline on bundled data and write a report."),
    "convert": ("convert", "Convert particle metadata between cryoSPARC .cs and RELION STAR versions."),
    "simulate": ("simulate", "Simulate particle images from a map with known poses, CTF and noise."),
    "reconstruct": ("reconstruct", "Reconstruct a map (and half maps, FSC) from posed particles."),
    "fsc": ("fsc", "Fourier shell correlation between two maps and their resolution."),
    "validate": ("validate", "Alignment precision/accuracy of a refinement (Vargas et al. 2017), Q and pruning."),
    "align-maps": ("align_maps", "Align 3D maps to a reference and carry particle poses along."),
    "evaluate": ("evaluate", "Benchmark predicted poses against a ground truth (CESPED metrics, maps, report)."),
    "refine": ("refine", "Refine particle poses locally, gold standard (each half against its own half map)."),
    "train": ("train", "Train a pose estimator (cryo-forum or SO(3) grid) on aligned particles."),
    "predict": ("predict", "Predict particle poses with a trained estimator; uncertainty clean-up."),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, short_help = COMMANDS[name]
        try:
            module = importlib.import_module(f"cryopose.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cryopose.cli.{module_name}":
                return None
            raise
        command = module.command
        command.short_help = command.short_help or short_help
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cryopose")
def cli() -> None:
    """cryopose: the poses of cryo-EM particle images: simulate them, reconstruct and
    compare maps, validate a refinement, align maps, learn, predict, evaluate and refine poses.

    Files follow RELION's conventions (STAR 3.0/3.1/5, MRC); cryoSPARC .cs is read too.
    """


class _EchoHandler(logging.Handler):
    """Library notes (the ``cryopose`` logger, INFO and up) as plain lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(record.getMessage(), err=True)


def _setup_logging() -> None:
    logger = logging.getLogger("cryopose")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _option_flags(argv: list[str]) -> set[str]:
    """The option strings (--apix, --no-ctf, ...) of the command named in ``argv``."""
    name = next((a for a in argv if not a.startswith("-")), None)
    command = cli.get_command(click.Context(cli), name) if name else None
    if command is None:
        return set()
    return {flag for p in command.params for flag in (*p.opts, *getattr(p, "secondary_opts", ()))}


def user_error_message(exc: UserError, argv: list[str]) -> str:
    """One line for a UserError: the library's message, plus the option that fixes it
    (" with --apix") when the command has that option."""
    message = " ".join(str(exc).split())
    flag = f"--{exc.option}" if getattr(exc, "option", None) else None
    if flag and flag in _option_flags(argv):
        message += f" with {flag}"
    return message


def click_error_message(exc: click.ClickException, argv: list[str]) -> str:
    """A usage error as one line, with where to read the command's options."""
    message = " ".join(exc.format_message().split())
    if isinstance(exc, click.UsageError):
        name = next((a for a in argv if not a.startswith("-")), None)
        where = f"cryopose {name} --help" if name in COMMANDS else "cryopose --help"
        message += f" (see {where})"
    return message


INTERRUPTED = "Interrupted; finished work is kept and a rerun resumes."


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_allocator()  # before the command imports torch (see cryopose.jobs.allocator)
    _setup_logging()
    try:
        cli.main(args=argv, prog_name="cryopose", standalone_mode=False)
    except UserError as exc:
        click.echo(f"Error: {user_error_message(exc, argv)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C (KeyboardInterrupt) into Abort, keeping it as the cause
        interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
        click.echo(INTERRUPTED if interrupted else "Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"Error: {click_error_message(exc, argv)}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    sys.exit(0)
