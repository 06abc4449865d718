"""``python -m smirk_edge.benchmarks [options]``: the same as ``smirk-edge bench``."""

import sys

from smirk_edge.cli import run_command


def main(argv=None) -> int:
    return run_command("bench", argv, prog="python -m smirk_edge.benchmarks")


if __name__ == "__main__":
    sys.exit(main())
