"""`python -m lwm.training CONFIG [key=value ...]`: the entry point for torchrun and deepspeed launchers."""

import argparse
import sys

from lwm.training.cli import configure, run

parser = argparse.ArgumentParser(prog="python -m lwm.training")
configure(parser)
sys.exit(run(parser.parse_args()))
