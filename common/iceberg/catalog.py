"""The Iceberg catalog of the `iceberg:` section, loaded with pyiceberg's load_catalog, and where
an archived table's Iceberg table and data files are.

The catalog's properties are passed as given. What the archive's own S3 client uses fills the
S3 properties the catalog leaves unset: s3.endpoint_url (for a PostgreSQL-served or REST catalog
that reads the archive's objects), s3.region, and the credentials of botocore's chain (the
environment, a profile, an instance role), resolved when the catalog is loaded, never written
anywhere. Secrets come from the environment (${VAR} in the file, or pyiceberg's own
PYICEBERG_CATALOG__<NAME>__<PROPERTY> variables), and redacted() is what any message shows."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.archive import layout
from common.config import Config
from common.archive.storage import key_path

DEFAULT_NAME = "archive"
#: Catalog properties whose values are never shown (pyiceberg's names for secrets).
_SECRET = re.compile(r"(secret|password|token|credential|session|key-id|access-key)", re.IGNORECASE)


def catalog_properties(cfg: Config, *, with_credentials: bool = True) -> tuple[str, dict[str, str]]:
    """(catalog name, properties for load_catalog): the section's, then what the s3 section adds."""
    assert cfg.iceberg is not None
    given = {str(k): str(v) for k, v in cfg.iceberg.catalog.items() if v is not None}
    name = given.pop("name", DEFAULT_NAME)
    props = dict(given)
    if cfg.storage == "s3":
        if cfg.s3.endpoint_url:
            props.setdefault("s3.endpoint", cfg.s3.endpoint_url)
        props.setdefault("s3.region", cfg.s3.region)
        if with_credentials and "s3.access-key-id" not in given:
            props.update(_credentials())
    return name, props


def _credentials() -> dict[str, str]:
    """The archive client's credentials (botocore's chain); none found: pyarrow's own chain decides."""
    import botocore.session

    creds = botocore.session.get_session().get_credentials()
    if creds is None:
        return {}
    frozen = creds.get_frozen_credentials()
    out = {"s3.access-key-id": frozen.access_key, "s3.secret-access-key": frozen.secret_key}
    if frozen.token:
        out["s3.session-token"] = frozen.token
    return out


def load(cfg: Config, *, read_only: bool = False) -> Any:
    """`read_only` (a dry run, validate): an SQL catalog's database gets no tables of its own yet."""
    from pyiceberg.catalog import load_catalog

    name, props = catalog_properties(cfg)
    if read_only and props.get("type") == "sql":
        props["init_catalog_tables"] = "false"
    catalog = load_catalog(name, **props)
    if props.get("type") == "rest" and props.get("rest.sigv4-enabled", "").lower() == "true":
        _sign_payload_hashes(catalog, props["uri"])
    return catalog


@contextmanager
def opened(cfg: Config, *, read_only: bool = False) -> Iterator[Any]:
    """The catalog for one tool's step; an SQL catalog's connection pool is closed after it (a
    daemon loads it again on every table of every run)."""
    catalog = load(cfg, read_only=read_only)
    try:
        yield catalog
    finally:
        engine = getattr(catalog, "engine", None)
        if engine is not None:
            engine.dispose()


def _sign_payload_hashes(catalog: Any, uri: str) -> None:
    """pyiceberg signs a REST request's body without sending its hash: S3-style servers (SeaweedFS's
    Iceberg catalog) require x-amz-content-sha256 and refuse the signature otherwise (403). The
    header carries the body's SHA-256, which the signature then covers; AWS accepts it too."""
    import hashlib

    session = getattr(catalog, "_session", None)
    if session is None:
        return
    adapter = session.get_adapter(uri)
    sign = getattr(adapter, "add_headers", None)
    if sign is None:
        return

    def add_headers(request: Any, **kwargs: Any) -> None:
        if request.body and "x-amz-content-sha256" not in request.headers:
            body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
            request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        sign(request, **kwargs)

    adapter.add_headers = add_headers


def redacted(props: dict[str, str]) -> dict[str, str]:
    """Properties as messages and the dry run may show them: secrets and URL passwords hidden."""
    out = {}
    for key, value in props.items():
        if _SECRET.search(key):
            out[key] = "***"
        else:
            out[key] = _hide_password(value)
    return out


def secret_values(props: dict[str, str]) -> list[str]:
    """The values redacted() hides (a URL's password alone), to keep them out of any message."""
    out = [v for k, v in props.items() if _SECRET.search(k) and v]
    for value in props.values():
        try:
            password = urlsplit(value).password
        except ValueError:
            continue
        if password:
            out.append(password)
    return out


def _hide_password(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def namespace(cfg: Config, database: str) -> str:
    assert cfg.iceberg is not None
    return cfg.iceberg.namespace or database


def table_name(schema: str, table: str) -> str:
    """The Iceberg table's name in its namespace: the table's name, `<schema>__<table>` outside
    public (an Iceberg name cannot hold a dot). The table's pg-archiver.source property says which
    archived table it is, so two names that meet here are refused, never mixed."""
    return table if schema == "public" else f"{schema}__{table}"


def identifier(cfg: Config, database: str, schema: str, table: str) -> str:
    return f"{namespace(cfg, database)}.{table_name(schema, table)}"


def source(database: str, schema: str, table: str) -> str:
    return f"{database}/{schema}.{table}"


def location(cfg: Config, database: str, schema: str, table: str) -> str:
    """Where the Iceberg table's metadata goes: the table's control folder (common/archive/layout.py),
    outside every table's folder, so engines reading the folder see only the data."""
    return f"{_root(cfg)}{layout.control_prefix(cfg.s3.prefix, database, schema, table)}iceberg"


def data_path(cfg: Config, key: str) -> str:
    """The archive object `key` as a data file path of the Iceberg table (no copy: the object itself)."""
    if cfg.storage == "local":
        assert cfg.local_dir is not None
        from pathlib import Path

        return f"file://{key_path(Path(cfg.local_dir), key)}"
    return f"s3://{cfg.s3.bucket}/{key}"


def _root(cfg: Config) -> str:
    if cfg.storage == "local":
        assert cfg.local_dir is not None
        from pathlib import Path

        return f"file://{Path(cfg.local_dir).resolve()}/"
    return f"s3://{cfg.s3.bucket}/"
