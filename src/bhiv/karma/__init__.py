"""Karma: turns events into rewards and Q-learning updates (domain logic, no I/O)."""
