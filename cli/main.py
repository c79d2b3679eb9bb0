"""keras-sphereface command line: `python cli/main.py COMMAND --help`.

A thin click group: each command parses its options, calls the library and prints. Bad
input (a `UserInputError`, or an `OSError` on a path the user gave) is printed as one clear
message with exit code 2, never as a traceback.
"""

import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.commands import COMMANDS  # noqa: E402
from keras_sphereface.errors import UserInputError  # noqa: E402


class Group(click.Group):
    """A click group that turns user errors into a message and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (UserInputError, OSError) as error:
            # OSError: a path the user gave cannot be read or written (missing, a file where a
            # folder is needed, no permission, disk full); its message names the path.
            click.echo(f"Error: {error}", err=True)
            ctx.exit(2)


@click.group(cls=Group)
def main():
    """SphereFace-family face recognition: align, train, evaluate, export, demo."""


for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
