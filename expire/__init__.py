"""The expire tool (issue 29): archive objects past the table's archive retention are deleted, legal holds and Object Lock permitting."""
