"""smtpgate: an authenticated SMTP submission server and the auth service behind it."""

__version__ = "0.1.0"
