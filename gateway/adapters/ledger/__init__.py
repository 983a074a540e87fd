"""The ledger on disk: the writer, its segment files, readers, pruning and checkpoint signing keys."""
