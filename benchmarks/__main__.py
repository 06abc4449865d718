"""``python -m smirk_edge.benchmarks [options]``: the same as ``smirk-edge bench``."""

import argparse
import sys

from .cli import add_arguments, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m smirk_edge.benchmarks",
                                description="latency, throughput and memory per stage and engine")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
