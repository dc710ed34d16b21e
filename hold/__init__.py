"""The hold tool (issue 29): legal holds on a table's archived objects, which expiry and erasure never override."""
