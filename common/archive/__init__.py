"""The archive and its records: where it is stored (S3, a local directory, the fallback directory,
and the botocore client for them), its key layout, manifests and their sets, the digest chain,
withdrawal and expiry records, the table listing and index, the catalog the tools read through,
and the verified replacement of an object (erase, --migrate-layout)."""
