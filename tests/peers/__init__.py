"""Third-party peers the integration tests start themselves: Postfix + Dovecot, aiosmtpd, a toy."""
