"""The archive's lifecycle (issue 29): legal holds and what they hold, S3's legal hold, and the
table session expire and hold share (expiry records are the archive's: common/archive/expirations.py)."""
