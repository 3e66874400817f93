"""The Bucket: the append-only event depository (domain logic, no I/O)."""
