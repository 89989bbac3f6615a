"""Auth service: credential stores, password hashing, verified-credential cache, auth log."""
