"""The ``cryopose`` command: one module per command under ``cryopose.cli``.

Each command module defines a click command named ``command``; it is imported only when
that command runs, so ``cryopose --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from cryopose import __version__
from cryopose.errors import UserError

# command name -> (module under cryopose.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "Run the whole pipeline on bundled data and write a report."),
    "convert": ("convert", "Convert particle metadata between cryoSPARC .cs and RELION STAR versions."),
    "simulate": ("simulate", "Simulate particle images from a map with known poses, CTF and noise."),
    "reconstruct": ("reconstruct", "Reconstruct a map (and half maps, FSC) from posed particles."),
    "fsc": ("fsc", "Fourier shell correlation between two maps and their resolution."),
    "validate": ("validate", "Alignment precision/accuracy of a refinement (Vargas et al. 2017), Q and pruning."),
    "align-maps": ("align_maps", "Align 3D maps to a reference and carry particle poses along."),
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
    """cryopose: simulate, reconstruct, validate and align the poses of cryo-EM particles.

    Files follow RELION's conventions (STAR 3.0/3.1/5, MRC); cryoSPARC .cs is read too.
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit with status 2."""
    try:
        cli.main(args=argv, prog_name="cryopose", standalone_mode=False)
    except UserError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted; finished work is kept and a rerun resumes.", err=True)
        sys.exit(130)
    sys.exit(0)
