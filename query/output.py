"""Where query results go, one Arrow batch at a time: an aligned table for a terminal, CSV, JSON
lines or Parquet. Values come out as the archive holds them: text with tabs, newlines and unicode
intact in CSV and JSON lines; numerics exact (as text in JSON); timestamps in ISO 8601 (infinity, BC and years past 9999 as
PostgreSQL writes them); bytea as
PostgreSQL's `\\x` hex. A file named by --output appears only once the query has finished: it is
written beside its final name and renamed, or removed if the query fails."""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from common.arrow_types import python_values
from common.pgtypes import bytea_text

FORMATS = ("table", "csv", "jsonl", "parquet")
#: Rows the table format sizes its columns on (later, longer values are cut with an ellipsis).
TABLE_SAMPLE = 200
TABLE_MAX_WIDTH = 60


class Writer(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...
    def close(self) -> None: ...


def text_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return bytea_text(value)
    return str(value)


def json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN or Infinity
    return text_value(value)  # Decimal stays exact as text; timestamps, dates, bytes as text


class CsvWriter:
    def __init__(self, out: IO[str], schema: pa.Schema) -> None:
        self._w = csv.writer(out, lineterminator="\n")
        self._w.writerow(schema.names)

    def write(self, batch: pa.RecordBatch) -> None:
        cols = [python_values(batch.column(i)) for i in range(batch.num_columns)]
        self._w.writerows([text_value(v) for v in row] for row in zip(*cols))

    def close(self) -> None:
        pass


class JsonlWriter:
    def __init__(self, out: IO[str], schema: pa.Schema) -> None:
        self.out, self.names = out, schema.names

    def write(self, batch: pa.RecordBatch) -> None:
        cols = [python_values(batch.column(i)) for i in range(batch.num_columns)]
        for row in zip(*cols):
            doc = {n: json_value(v) for n, v in zip(self.names, row)}
            self.out.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")

    def close(self) -> None:
        pass


class TableWriter:
    """Aligned columns for a person at a terminal; control characters are shown escaped."""

    def __init__(self, out: IO[str], schema: pa.Schema) -> None:
        self.out, self.names = out, schema.names
        self.widths: list[int] | None = None
        self.rows = 0

    @staticmethod
    def _cell(value: Any) -> str:
        text = text_value(value)
        return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text

    def write(self, batch: pa.RecordBatch) -> None:
        cols = [python_values(batch.column(i)) for i in range(batch.num_columns)]
        cells = [[self._cell(v) for v in row] for row in zip(*cols)]
        if self.widths is None:
            sample = cells[:TABLE_SAMPLE]
            self.widths = [min(TABLE_MAX_WIDTH, max([len(n), *(len(r[i]) for r in sample)])) for i, n in enumerate(self.names)]
            self._line(self.names)
            self.out.write("  ".join("-" * w for w in self.widths) + "\n")
        for row in cells:
            self._line(row)
        self.rows += len(cells)

    def _line(self, cells: list[str]) -> None:
        assert self.widths is not None
        fitted = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(cells, self.widths)]
        self.out.write("  ".join(c.ljust(w) for c, w in zip(fitted, self.widths)).rstrip() + "\n")

    def close(self) -> None:
        if self.widths is None:
            self.out.write("(no rows)\n")


class ParquetOut:
    def __init__(self, out: IO[bytes], schema: pa.Schema) -> None:
        self._w = pq.ParquetWriter(out, schema, compression="zstd")

    def write(self, batch: pa.RecordBatch) -> None:
        self._w.write_batch(batch)

    def close(self) -> None:
        self._w.close()


def make_writer(fmt: str, out: IO[Any], schema: pa.Schema) -> Writer:
    kinds: dict[str, Any] = {"table": TableWriter, "csv": CsvWriter, "jsonl": JsonlWriter, "parquet": ParquetOut}
    writer: Writer = kinds[fmt](out, schema)
    return writer


@contextmanager
def output_file(path: Path, *, binary: bool) -> Iterator[IO[Any]]:
    """A file that takes its final name only when the block finishes without an error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".part")
    try:
        fh: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

