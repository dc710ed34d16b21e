"""cost: what the archives cost on S3 per storage class, from a size or the measured bucket (issue 7)."""
