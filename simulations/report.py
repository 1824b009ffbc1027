"""Tables and plots again, no runs: a study's results folder (rebuilt by the script that
wrote it, named in its ``study.json``) or one federated run directory.

    python -m simulations.report runs/study-noise-r4        # results.md, per_round.md, plots
    python -m simulations.report runs/fed-20261201-101500   # report.md and plots/ (= fedgate report)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedgate.federated.report import write_report
from simulations.results import VARIANTS_FILE, report_study


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a study's --out folder, or a run directory")
    args = p.parse_args(argv)
    if (args.folder / VARIANTS_FILE).is_file():
        print(report_study(args.folder))
    else:
        print(f"wrote {write_report(args.folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
