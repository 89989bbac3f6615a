"""TLS: certificates, and a sans-IO TLS session over memory BIOs (for channel binding)."""
