"""The benchmark table: rows of measured figures beside their targets, rendered as Markdown.

Every section appends ``Row``s; ``render`` turns them into one Markdown document with a header
(date, machine, versions, command) so a reader can tell where each figure came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

COLUMNS = ("Benchmark", "Case", "Measured", "Baseline / minimum", "Ratio", "Target", "Met", "Notes")


@dataclass
class Row:
    """One figure: what was measured, against what, and whether the target holds.

    ``met`` is ``None`` when a row has no target (context figures) or could not be measured.
    """

    section: str
    case: str
    measured: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    notes: str = ""

    def cells(self) -> list[str]:
        met = {True: "yes", False: "**no**", None: ""}[self.met]
        return [
            self.section,
            self.case,
            self.measured,
            self.baseline,
            self.ratio,
            self.target,
            met,
            self.notes,
        ]


@dataclass
class Report:
    """Header facts plus the rows of every section, in run order."""

    header: list[tuple[str, str]]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, rows: Iterable[Row]) -> None:
        self.rows.extend(rows)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(report: Report, title: str = "guru_analytics benchmarks") -> str:
    """The whole BENCHMARKS.md text."""
    out = [f"# {title}", ""]
    out += [f"- **{k}**: {v}" for k, v in report.header]
    out += ["", markdown_table(COLUMNS, (r.cells() for r in report.rows)), ""]
    if report.notes:
        out += ["## How these were measured", ""]
        out += [f"- {n}" for n in report.notes]
        out.append("")
    return "\n".join(out)


def fmt_ratio(value: float | None, digits: int = 2) -> str:
    """``1.23x``; an em dash when there is no value (e.g. a contender could not run).

    A ratio that is not exactly 1 but rounds to it gets more digits (``1.001x``), so a
    missed "1.00x" target never reads as met.
    """
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    while float(text) == 1.0 and value != 1.0 and digits < 6:
        digits += 1
        text = f"{value:.{digits}f}"
    return text + "x"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def fmt_mb(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} MB"
