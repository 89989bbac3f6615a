"""Sending policy: who may relay, send as which address, how much."""
