"""`python -m agent.simnode NODE OUT_DIR`: write a simulated node's directory.

NODE is a shipped name (`--list` shows them) or a spec file. Errors are one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.simnode.errors import SimulationError
from agent.simnode.generate import generate
from agent.simnode.node import SPEC_SUFFIXES, load_spec, shipped_nodes, shipped_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.simnode",
        description="Write a simulated node (sysfs/, nvml.json, node.yaml) into a new directory.",
    )
    parser.add_argument("node", nargs="?", help="a shipped node name or a spec file (.yaml)")
    parser.add_argument("out_dir", nargs="?", type=Path, help="where to write it (new or empty)")
    parser.add_argument("--list", action="store_true", help="list the shipped nodes and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(shipped_nodes()))
        return 0
    if args.node is None or args.out_dir is None:
        parser.error("give NODE and OUT_DIR (or --list)")
    try:
        path = Path(args.node)
        spec = load_spec(path) if path.suffix in SPEC_SUFFIXES else shipped_spec(args.node)
        generate(spec, args.out_dir)
    except SimulationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
