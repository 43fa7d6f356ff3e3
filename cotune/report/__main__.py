"""`python -m cotune.report PATH [PATH ...]`: (re)build PATH/report.html, print its path and each problem.

Exit code 0 even when some files were missing or damaged (the report names them); 2 when PATH is
not a directory.
"""
from __future__ import annotations

import sys

from cotune.errors import CotuneError, one_line
from cotune.report.build import build_report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    code = 0
    for path in args:
        try:
            out = build_report(path)
        except CotuneError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            code = err.exit_code
            continue
        print(f"report: {out} ({out.size / 1e6:.1f} MB)")
        for line in out.problems:
            print(f"  problem: {line}")
    return code


if __name__ == "__main__":
    sys.exit(main())
