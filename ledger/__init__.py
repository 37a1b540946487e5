"""The output\x27s bookkeeping, without Ray (see docs/ledger.md)."""
