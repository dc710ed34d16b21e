"""Sizes for people: one spelling for every tool's messages."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    """1023 B, 1.5 KB, 83.5 MB ... (powers of 1024), TB at most."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
