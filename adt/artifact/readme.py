"""The generated blocks of the front-page documents, written from the committed outputs.

The README states the headline numbers and REPRODUCTION.md the gates' current values; both
are read from the files the notebooks wrote (``figures/``), never typed by hand. Each block
sits between two markers of its document::

    <!-- results:start -->
    ... written by results_block ...
    <!-- results:end -->

:func:`results_block` is the README's "What it found": per method, A_rob's mean over seeds
with its 95 % interval and the clean accuracy (from :data:`RESULTS_TABLE`, whose cells read
``"85.3 ± 2.3 [80.0, 90.2]"``), the verdict counts of ``CLAIMS.md`` and a link to it.
:func:`gates_block` is REPRODUCTION.md's table of each validity gate's current value and of
what decides the verdicts.
:func:`insert_block` puts a block between its markers; :func:`stale_block` says why a
document's block is not what the committed outputs give. :func:`write_blocks` rewrites every
block of :data:`BLOCKS` (the batch, after the committed profile's outputs are in place) and
:func:`stale_blocks` lists what differs (``make check-fresh``).
No torch.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adt.config.provenance import REPO_ROOT
from adt.core.io import markdown_table

__all__ = ["RESULTS_TABLE", "CLAIMS", "HEADLINE", "claims_rows", "direction_line", "BLOCKS", "Cell", "parse_cell", "results_block",
           "gates_block", "audit_block", "markers", "insert_block", "stale_block", "write_blocks", "stale_blocks"]

#: The table the README's results come from, relative to the output folder (``figures/``);
#: any table whose cells read "mean ± sd [low, high]", one row per method, will do.
RESULTS_TABLE = Path("tables") / "tab04_whitebox.csv"
#: The claims file, relative to the output folder; its line "Verdicts: ..." is quoted.
CLAIMS = Path("CLAIMS.md")
#: What the headline claims' rows of ``CLAIMS.md`` say (the worst-case A_rob claims).
HEADLINE = "in the worst case (A_rob"
#: The gates' tables, relative to the output folder (notebook 06): per model and seed of the
#: chapters, and per method over the budget study's runs (optional).
GATES_TABLE = Path("tables") / "tab06_gates.csv"
STUDY_GATES_TABLE = Path("tables") / "tab06_study_gates.csv"

_CELL = re.compile(r"^\s*(-?[\d.]+)\s*±\s*([\d.]+)\s*\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]\s*$")


@dataclass(frozen=True)
class Cell:
    """One cell over seeds: the mean, the seed standard deviation and the 95 % interval,
    as printed (strings, so that the README shows the table's own digits)."""

    mean: str
    sd: str
    low: str
    high: str


def parse_cell(text: str, where: str = "the table") -> Cell:
    """A cell "85.3 ± 2.3 [80.0, 90.2]" as a :class:`Cell`; a clear error otherwise."""
    match = _CELL.match(text)
    if match is None:
        raise ValueError(f"{where}: the cell {text!r} is not 'mean ± sd [low, high]' "
                         "(e.g. '85.3 ± 2.3 [80.0, 90.2]')")
    return Cell(*match.groups())


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `make reproduce` to write it")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], path: Path, name: str) -> str:
    """The column of ``rows`` called ``name`` (exactly, or the first that starts with it;
    case-insensitive)."""
    header = list(rows[0]) if rows else []
    found = ([c for c in header if c.lower() == name.lower()]
             or [c for c in header if c.lower().startswith(name.lower())])
    if not found:
        raise ValueError(f"{path} has no column {name!r} (it has {header})")
    return found[0]


def _link(path: Path, relative_to: Path | None) -> str:
    """``path`` as a Markdown link target: relative to ``relative_to`` (the document's
    folder) when given, else as given when relative, else relative to the repository."""
    if relative_to is not None:
        return Path(os.path.relpath(Path(path).resolve(), Path(relative_to).resolve())).as_posix()
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def _scale(table: Path) -> str:
    """The scale a table was computed at, from its Markdown caption (profile, dataset, model,
    seeds, test examples); empty when the Markdown twin is missing."""
    twin = table.with_suffix(".md")
    if not twin.is_file():
        return ""
    caption = twin.read_text(encoding="utf-8").split("\n", 1)[0]
    keep = ("profile ", "dataset ", "model ", "seeds ")
    parts = [p.strip() for p in caption.split(" · ")]
    return ", ".join(p for p in parts if p.startswith(keep) or p.endswith("test examples"))


def verdict_line(claims: Path) -> str:
    """The line of ``claims`` that starts with "Verdicts:"."""
    if not claims.is_file():
        raise FileNotFoundError(f"{claims} is missing; run `make reproduce` to write it")
    for line in claims.read_text(encoding="utf-8").splitlines():
        if line.startswith("Verdicts:"):
            return line.strip()
    raise ValueError(f"{claims} has no line starting with 'Verdicts:'")


def direction_line(claims: Path) -> str | None:
    """The line of ``claims`` that starts with "**Direction:**" (which way the headline effects
    point), or None when it has none."""
    if not claims.is_file():
        return None
    return next((line.strip() for line in claims.read_text(encoding="utf-8").splitlines()
                 if line.startswith("**Direction:**")), None)


def results_block(figures_dir: Path, table: Path = RESULTS_TABLE, *,
                  relative_to: Path | None = None) -> str:
    """The README's results: per method (row of ``figures_dir / table``), A_rob's mean over
    seeds with its 95 % interval and the clean accuracy's mean; the method with the highest
    mean A_rob; the verdict counts of ``CLAIMS.md`` and links to both files. Links are
    relative to ``relative_to`` (the README's folder), else as :func:`_link` says."""
    figures_dir = Path(figures_dir)
    path = figures_dir / table
    rows = _read_csv(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    name = next(iter(rows[0]))  # the first column names the method
    a_rob, clean = (_column(rows, path, c) for c in ("A_rob", "Clean"))
    cells = [(row[name], parse_cell(row[a_rob], f"{path}, {row[name]}, {a_rob}"),
              parse_cell(row[clean], f"{path}, {row[name]}, {clean}")) for row in rows]
    best = max(cells, key=lambda c: float(c[1].mean))
    scale = _scale(path)
    claims = figures_dir / CLAIMS
    direction = direction_line(claims)
    lines = ([direction, ""] if direction else []) + [
        markdown_table(["method", "A_rob % (mean over seeds [95 % interval])", "clean %"],
                       [(m, f"**{r.mean}** [{r.low}, {r.high}]", c.mean) for m, r, c in cells]),
        f"Highest mean A_rob: {best[0]} ({best[1].mean}). "
        f"A_rob is the accuracy under the per-example worst case of every white-box attack"
        + (f"; {scale}." if scale else ".")
        + f" Source: [{path.with_suffix('.md').name}]({_link(path.with_suffix('.md'), relative_to)}).",
        "",
        f"{verdict_line(claims)} Every claim with its effect, interval and gates: "
        f"[{claims.name}]({_link(claims, relative_to)}).",
    ]
    try:
        rows_of_claims = claims_rows(claims)
    except ValueError:  # a claims file without its table: the counts alone
        rows_of_claims = []
    headline = [r for r in rows_of_claims if HEADLINE in r.get("claim (paper)", "")]
    if headline:
        lines += ["", "The headline claims, on the seeds and budgets their test names:", "",
                  markdown_table(["claim", "test", "effect (points) [95 % interval]", "verdict"],
                                 [(r["claim (paper)"].split(" in the worst case")[0], r["test"], r[
                                     "effect [95% interval]"], f"**{r['verdict']}**")
                                  for r in headline])]
    return "\n".join(lines).strip() + "\n"


def _gate_rows(figures_dir: Path) -> list[tuple[str, str]]:
    """(gate, its current value) for every gate of the committed per-model gate table, then
    of the budget study's (its names marked "(study runs)"): how many models, seeds or pairs
    pass, and the failing ones with their values."""
    tables = [(GATES_TABLE, "")] + ([(STUDY_GATES_TABLE, " (study runs)")]
                                    if (figures_dir / STUDY_GATES_TABLE).is_file() else [])
    by_gate: dict[str, list[dict[str, str]]] = {}
    for table, mark in tables:
        for row in _read_csv(figures_dir / table):
            by_gate.setdefault(f"`{row['gate']}`{mark}", []).append(row)
    out = []
    for gate, rows in by_gate.items():
        if len(rows) == 1:
            value = f"{rows[0]['result']}: {rows[0]['value']} ({rows[0]['detail']})"
        else:
            failed = [f"{r['model']} ({r['value']})" for r in rows if r["result"] != "pass"]
            value = f"{len(rows) - len(failed)} of {len(rows)} pass" + (
                f"; fail: {', '.join(failed)}" if failed else "")
        out.append((gate, value))
    return out


_REASON = re.compile(r"^([a-z][a-z ]*?): ([a-z_]+\b(?:\[[^\]]*\])?|[^(]+?)(?: \(| =|$)")


def _reason_rows(claims: Path) -> list[tuple[str, str]]:
    """(verdict and its reason, how many claims) over the verdicts of ``claims``: a gate's
    name for a gated verdict ("not testable here: <gate> ..."), the reason's words otherwise
    ("inconclusive: one seed"); plain verdicts count under their own name."""
    verdicts = _claim_verdicts(claims)
    counts: dict[str, int] = {}
    for verdict in verdicts:
        match = _REASON.match(verdict)
        key = f"{match.group(1)}: {match.group(2).strip()}" if match else verdict
        counts[key] = counts.get(key, 0) + 1
    return [(key, f"{n} of {len(verdicts)}") for key, n in counts.items()]


def _claim_verdicts(claims: Path) -> list[str]:
    """The verdict column of the claims table of ``claims`` (bold marks removed)."""
    return [row["verdict"] for row in claims_rows(claims)]


def claims_rows(claims: Path) -> list[dict[str, str]]:
    """The rows of the claims table of ``claims`` (column -> cell, bold marks removed)."""
    text = claims.read_text(encoding="utf-8") if claims.is_file() else ""
    lines: list[str] = []
    for line in text.splitlines():  # the first table: its contiguous "| ..." lines
        if line.startswith("| "):
            lines.append(line)
        elif lines:
            break
    if not lines:
        raise ValueError(f"{claims} has no claims table; run `make reproduce` to write it")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    if "verdict" not in header:
        raise ValueError(f"{claims}: its first table has no 'verdict' column ({header})")
    return [dict(zip(header, (c.strip().strip("*") for c in line.strip("|").split("|")),
                     strict=False)) for line in lines[2:]]


def gates_block(figures_dir: Path, *, relative_to: Path | None = None) -> str:
    """REPRODUCTION.md's current values of the gates: per gate of notebook 06's per-model
    table (``tab06_gates``), how many pass and which fail; then what decides the verdicts of
    ``CLAIMS.md`` (each gated verdict's gate or reason, and how many claims it decides), with
    links (relative to ``relative_to``, as in :func:`results_block`)."""
    figures_dir = Path(figures_dir)
    per_model = figures_dir / GATES_TABLE.with_suffix(".md")
    study = figures_dir / STUDY_GATES_TABLE.with_suffix(".md")
    claims = figures_dir / CLAIMS
    return (markdown_table(["gate", "current value (committed outputs)"], _gate_rows(figures_dir))
            + f"\nPer model and seed: [{per_model.name}]({_link(per_model, relative_to)})"
            + (f"; the study's runs: [{study.name}]({_link(study, relative_to)})"
               if study.is_file() else "") + ".\n\n"
            + markdown_table(["verdict: the gate or reason that decides it", "claims"],
                             _reason_rows(claims))
            + f"\nEvery claim: [{claims.name}]({_link(claims, relative_to)}).\n")


AUDIT_TABLES = (Path("tables") / "tab06_gate_audit.md", Path("tables") / "tab06_gate_changes.md")


def audit_block(figures_dir: Path, *, relative_to: Path | None = None) -> str:
    """REPRODUCTION.md's gate audit: chapter 6's two audit tables (each gate's history, and
    every headline verdict a gate changed), as the notebook wrote them, with links."""
    parts = []
    for table in AUDIT_TABLES:
        path = Path(figures_dir) / table
        caption, _, body = path.read_text(encoding="utf-8").partition("\n\n")
        parts.append(f"{caption} ([{path.name}]({_link(path, relative_to)}))\n\n{body.strip()}")
    return "\n\n".join(parts) + "\n"


#: block name -> what writes it from the output folder (``relative_to``: the document's
#: folder, for its links), and the document it lives in
BLOCKS: dict[str, tuple[Callable[..., str], str]] = {
    "results": (results_block, "README.md"),
    "gates": (gates_block, "REPRODUCTION.md"),
    "audit": (audit_block, "REPRODUCTION.md"),
}


def markers(name: str = "results") -> tuple[str, str]:
    """The start and end markers of block ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def insert_block(readme_text: str, block: str, name: str = "results",
                 source: str = "README.md") -> str:
    """``readme_text`` with what lies between the markers of block ``name`` replaced by
    ``block``. ``source`` names the document in the error when a marker is missing."""
    start, end = markers(name)
    i, j = readme_text.find(start), readme_text.find(end)
    if i < 0 or j < 0 or j < i:
        missing = [m for m, k in ((start, i), (end, j)) if k < 0] or [f"{start} before {end}"]
        raise ValueError(f"{source}: the generated block needs the markers {start} and {end}, "
                         f"one line each, in that order; missing: {', '.join(missing)}")
    return f"{readme_text[:i + len(start)]}\n{block.strip()}\n{readme_text[j:]}"


def _between(text: str, name: str) -> str | None:
    start, end = markers(name)
    i, j = text.find(start), text.find(end)
    return None if i < 0 or j < i else text[i + len(start):j].strip()


def stale_block(readme_path: Path, figures_dir: Path, name: str = "results") -> str | None:
    """Why the block ``name`` of ``readme_path`` is not what ``figures_dir`` gives now (None:
    it is). The fix is in the message."""
    readme_path = Path(readme_path)
    build = BLOCKS[name][0]
    if not readme_path.is_file():
        return f"{readme_path} is missing"
    current = _between(readme_path.read_text(encoding="utf-8"), name)
    start, end = markers(name)
    if current is None:
        return f"{readme_path}: no {start} ... {end} block"
    try:
        expected = build(Path(figures_dir), relative_to=readme_path.parent).strip()
    except (OSError, ValueError) as error:
        return f"{readme_path}: its {name} block cannot be made from {figures_dir}: {error}"
    if current == expected:
        return None
    old, new = current.splitlines(), expected.splitlines()
    first = next((k for k, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                 min(len(old), len(new)))
    shown = new[first] if first < len(new) else "(end of block)"
    return (f"{readme_path}: its {name} block differs from {figures_dir} from line {first + 1} "
            f"of the block on (expected: {shown!r}); rewrite it with "
            f"adt.artifact.readme.insert_block (run `make reproduce`)")


def write_blocks(root: Path = REPO_ROOT, figures_dir: Path | None = None) -> list[Path]:
    """Rewrite every block of :data:`BLOCKS` in its document under ``root`` from
    ``figures_dir`` (default ``root / "figures"``); returns the documents that changed.
    What the batch calls after it has moved the committed profile's outputs into place."""
    root = Path(root)
    figures_dir = Path(figures_dir) if figures_dir is not None else root / "figures"
    changed = []
    for name, (build, document) in BLOCKS.items():
        path = root / document
        text = path.read_text(encoding="utf-8")
        new = insert_block(text, build(figures_dir, relative_to=root), name, document)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def stale_blocks(root: Path = REPO_ROOT, figures_dir: Path | None = None) -> list[str]:
    """Why each block of :data:`BLOCKS` differs from ``figures_dir`` (empty: none does);
    what ``make check-fresh`` adds to its problems."""
    root = Path(root)
    figures_dir = Path(figures_dir) if figures_dir is not None else root / "figures"
    found = (stale_block(root / document, figures_dir, name) for name, (_, document)
             in BLOCKS.items())
    return [problem for problem in found if problem is not None]
