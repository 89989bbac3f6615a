"""Durable spool and delivery (Maildir, relay host)."""
