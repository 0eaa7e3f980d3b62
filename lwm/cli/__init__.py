"""The `lwm` command line: every argparse parser of the project and its dispatch (`lwm.cli.main`).

Library modules take plain arguments; the modules here turn command lines into those calls and print
what comes back.
"""

from lwm.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
