"""Helpers of the compliance tests (issue 17): a bucket with Object Lock, and what the archive
holds as every reader counts it (through common.archive.catalog, which skips withdrawn batches)."""
from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from common import batch_writer
from common.archive.catalog import Catalog, resolve_table
from common.config import Config


@pytest.fixture()
def locked_bucket(s3_client: Any) -> Iterator[str]:
    """A fresh bucket created with Object Lock (and so versioning) enabled. Its locked versions
    cannot be removed; each test has its own bucket."""
    name = f"locked-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name


def catalog_ids(cfg: Config, s3_client: Any, *, table: str = "audit_logs") -> Counter[Any]:
    """Primary keys of the archived rows, each as often as the archive holds it, as restore,
    query and erase see the archive."""
    catalog = Catalog(cfg, s3_client=s3_client)
    ref = resolve_table(cfg, "production_db", table)
    ids: Counter[Any] = Counter()
    for obj in catalog.list_objects(ref):
        data = catalog.read(obj)
        ids.update(batch_writer.decode(data, fmt=batch_writer.format_of(obj.key), columns=["id"])[0].column("id").to_pylist())
    return ids


def all_keys(s3_client: Any, bucket: str) -> list[str]:
    return [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
