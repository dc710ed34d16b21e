"""`children: archive` (issue 28): a table's family found, each batch's children moved with it,
the dry run's account of them."""
