"""`query`: search archived rows in place with DuckDB, without restoring them (issue 16)."""
