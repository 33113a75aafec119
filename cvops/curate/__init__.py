"""Curate: sources -> one validated, deduplicated, split, versioned FiftyOne dataset."""
