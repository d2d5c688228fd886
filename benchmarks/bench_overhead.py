"""Issue 2 targets: tiny tasks, many small calls, numpy that releases the GIL.

Prints a table of ratios measured in this run; exits 1 if a target is missed.
"""

import sys

from cyjob.bench import overhead_report

if __name__ == "__main__":
    report = overhead_report()
    report.print()
    sys.exit(1 if report.failed else 0)
