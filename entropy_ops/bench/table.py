"""The result table: one ``Row`` per (case, implementation), printed as it comes and appended to
a CSV (with the device, date, torch / triton / entropy_ops versions, thread count and measured
bandwidth of the run on every line)."""
import csv
import os
import sys
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional

import torch


@dataclass
class Row:
    op: str
    direction: str
    shape: str
    dtype: str
    impl: str
    time_ms: Optional[float] = None
    gb_s: Optional[float] = None
    pct_bw: Optional[float] = None
    gexp_s: Optional[float] = None
    speedup: Optional[float] = None  # eager time / this time, same run
    err_h: Optional[float] = None  # max |H - H_ref|, reference in float64
    err_logp: Optional[float] = None
    err_grad: Optional[float] = None
    rel_grad: Optional[float] = None  # ||grad - ref||_2 / ||ref||_2: what max-abs hides at bf16
    note: str = ""


# (field, title, width, format)
_COLUMNS = (
    ("op", "op", 20, "{}"), ("direction", "dir", 7, "{}"), ("shape", "shape (NxV)", 12, "{}"),
    ("dtype", "dtype", 5, "{}"), ("impl", "impl", 10, "{}"), ("time_ms", "ms", 9, "{:.2f}"),
    ("gb_s", "GB/s", 7, "{:.1f}"), ("pct_bw", "% BW", 6, "{:.1f}"), ("gexp_s", "G exp/s", 7, "{:.2f}"),
    ("speedup", "vs eager", 8, "{:.2f}x"), ("err_h", "err H", 8, "{:.1e}"),
    ("err_logp", "err logp", 8, "{:.1e}"), ("err_grad", "err grad", 8, "{:.1e}"),
    ("rel_grad", "rel grad", 8, "{:.1e}"),
)
# Token-level rows (bench/tokens.py): no exps; ``err_h`` holds the error of the op's output.
TOKEN_COLUMNS = (
    ("op", "op", 20, "{}"), ("direction", "dir", 7, "{}"), ("shape", "shape (BxT)", 12, "{}"),
    ("dtype", "dtype", 5, "{}"), ("impl", "impl", 10, "{}"), ("time_ms", "ms", 9, "{:.2f}"),
    ("gb_s", "GB/s", 7, "{:.1f}"), ("pct_bw", "% BW", 6, "{:.1f}"), ("speedup", "vs eager", 8, "{:.2f}x"),
    ("err_h", "err out", 8, "{:.1e}"), ("err_grad", "err grad", 8, "{:.1e}"),
)
META = ("device", "date", "torch", "triton", "entropy_ops", "threads", "bandwidth_gb_s")
# The note of a row whose implementation raised: first line of the message, at most this long
# (Inductor's and Triton's errors run to pages; the traceback is not what a table row is for).
_FAILURE_CHARS = 200


def failure_note(error: Exception) -> str:
    """``"failed: <type>: <message>"``: the row of an implementation that raised something
    unexpected, so that one broken kernel costs its own row, not the run and its CSV."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if len(message) > _FAILURE_CHARS or len(lines) > 1:
        message = message[:_FAILURE_CHARS] + " ..."
    return f"failed: {type(error).__name__}" + (f": {message}" if message else "")


def max_err(value, ref) -> Optional[float]:
    """``max |value - ref|`` (equal infinities, e.g. a label min-p filtered out, are no error)."""
    if value is None or ref is None:
        return None
    value = value.detach().double()
    return torch.where(value == ref, 0, (value - ref).abs()).max().item()


def rel_err(value, ref) -> Optional[float]:
    """``||value - ref||_2 / ||ref||_2`` (0 when both are 0). A bf16 gradient's max abs error is its
    own rounding of the largest entries, the same whether the rest is right or zero; this is not."""
    if value is None or ref is None:
        return None
    diff = torch.linalg.vector_norm(value.detach().double() - ref).item()
    norm = torch.linalg.vector_norm(ref).item()
    return diff / norm if norm else (0.0 if diff == 0 else float("inf"))


def _cell(value, fmt, width, numeric) -> str:
    text = "" if value is None else fmt.format(value)
    return text.rjust(width) if numeric else text.ljust(width)


class Printer:
    """Prints rows as they come (``columns``: ``_COLUMNS`` or ``TOKEN_COLUMNS``); long notes
    (skip reasons) become numbered footnotes."""

    def __init__(self, columns=_COLUMNS):
        self.columns = columns
        self.notes: Dict[str, int] = {}

    def head(self) -> str:
        titles = [_cell(t, "{}", w, i >= 5) for i, (_, t, w, _) in enumerate(self.columns)]
        line = " ".join(titles) + "  note"
        return line + "\n" + "-" * len(line)

    def line(self, row: Row) -> str:
        cells = [_cell(getattr(row, f), fmt, w, i >= 5) for i, (f, _, w, fmt) in enumerate(self.columns)]
        return " ".join(cells) + "  " + self._note(row.note)

    def _note(self, note: str) -> str:
        if len(note) <= 30:
            return note
        number = self.notes.setdefault(note, len(self.notes) + 1)
        return f"{note.split(':')[0]} [{number}]"

    def footnotes(self) -> str:
        return "\n".join(f"[{n}] {note}" for note, n in self.notes.items())


def append_csv(path: str, rows: List[Row], meta: Dict[str, object]) -> None:
    """Append ``rows`` to ``path`` (created with a header line when new). A file written with
    other columns (an older version's) is first rewritten under the union of both headers, its
    rows left blank in the new columns, so every line stays aligned with the header. A last line
    without its newline (a hand edit, a write cut short) is ended first, not glued to a new row."""
    names = list(META) + [f.name for f in fields(Row)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        names = _upgrade_header(path, names)
    unended = not new and not _ends_with_newline(path)
    with open(path, "a", newline="") as f:
        if unended:
            f.write("\r\n")  # csv's own line terminator
        writer = csv.DictWriter(f, fieldnames=names)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({**meta, **{k: _csv_value(v) for k, v in asdict(row).items()}})


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


# DictReader's key for the fields of a line beyond its header's (a ragged line).
_OVERFLOW = "\0overflow"


def _upgrade_header(path: str, names: List[str]) -> List[str]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f, restkey=_OVERFLOW)
        old_names = list(reader.fieldnames or [])
        if old_names == names:
            return names
        old_rows, ragged = [], []
        for row in reader:
            if row.pop(_OVERFLOW, None) is not None:
                ragged.append(reader.line_num)
            old_rows.append(row)
    merged = names + [n for n in old_names if n not in names]
    if ragged:
        lines = ", ".join(map(str, ragged[:10])) + (" ..." if len(ragged) > 10 else "")
        print(f"warning: {path}: line(s) {lines} had more fields than the header; rewritten under the new "
              "columns, they keep their first fields and lose the extra ones", file=sys.stderr)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=merged)
        writer.writeheader()
        writer.writerows(old_rows)
    os.replace(tmp, path)
    return merged


def _csv_value(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value
