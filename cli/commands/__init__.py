"""The CLI's commands, one module each; `COMMANDS` is what cli/main.py registers."""

from cli.commands.align import align
from cli.commands.demo import demo
from cli.commands.evaluate import evaluate
from cli.commands.export import export
from cli.commands.train import train

# in the order of the data flow: align faces, train, evaluate, export; demo runs them all
COMMANDS = [align, train, evaluate, export, demo]
