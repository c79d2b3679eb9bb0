"""The CLI's commands, one module each; `COMMANDS` is what cli/main.py registers."""

COMMANDS = []
