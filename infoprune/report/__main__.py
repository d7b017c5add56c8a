"""The report's command line: ``python -m infoprune.report <sweep dirs> [options]`` (see :mod:`infoprune.report`)."""
from __future__ import annotations

import argparse
import shlex
import sys

import infoprune.report
from infoprune.report.page import write_report
from infoprune.report.plots import RESOURCES


def main() -> None:
    parser = argparse.ArgumentParser(description=infoprune.report.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", nargs="+", help="prune.py multirun (or run) directories")
    parser.add_argument("--out", help="path prefix of the report files (default: <first sweep dir>/report)")
    parser.add_argument("--by", nargs="+", default=[], help="config keys to group by as well (dotted paths)")
    parser.add_argument("--metrics", nargs="+", default=[], help="only these metrics (names as in results.json)")
    parser.add_argument("--question", help="what the page answers (its title)")
    parser.add_argument("--discussion", help="where the answer is discussed (a Markdown link)")
    parser.add_argument("--reference", help="a metric every row is compared with, seed by seed (paired)")
    parser.add_argument("--x", choices=sorted(RESOURCES), default="params",
                        help="the plot's x axis: share of parameters (default) or FLOPs remaining")
    args = parser.parse_args()
    command = "python -m infoprune.report " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        table, figure = write_report(*args.sweep_dirs, out=args.out, by=tuple(args.by), metrics=tuple(args.metrics),
                                     question=args.question, discussion=args.discussion, command=command,
                                     reference=args.reference, x=args.x)
    except (ValueError, KeyError, FileNotFoundError) as error:
        parser.error(str(error))
    print(table.read_text())
    print(f"written: {table} and {figure}")


if __name__ == "__main__":
    main()
