"""`--migrate-layout`: the legacy layout moved (layout.py) and objects of mixed schema rewritten
(schema.py)."""
