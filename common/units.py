"""Sizes: one spelling for every tool's messages, and how many rows fit in a byte budget."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    """1023 B, 1.5 KB, 83.5 MB ... (powers of 1024), TB at most."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def rows_within(budget: int, *, rows: int, nbytes: int, most: int) -> int:
    """How many rows of the size these `rows` of `nbytes` have fit in `budget` bytes: `most` at
    most, one at least (the archiver's read windows, restore's render slices). Without a size to
    go by (no rows, or no bytes recorded): `most`."""
    if rows <= 0 or nbytes <= 0:
        return most
    return max(min(most, budget * rows // nbytes), 1)
