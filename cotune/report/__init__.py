"""The report: one self-contained HTML page for a run or search directory, built from its files only.

    from cotune.report import build_report
    path = build_report("runs/search")    # writes runs/search/report.html, returns its Path
    path.problems                          # ['trials.csv could not be read: ValueError: ...', ...]

`python -m cotune.report PATH` does the same from a shell. Building never imports torch.
"""
from cotune.report.build import REPORT, ReportPath, build_report, register_section

__all__ = ["build_report", "ReportPath", "register_section", "REPORT"]
