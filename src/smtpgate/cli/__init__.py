"""The smtpgate command line (thin: parses arguments, calls library code)."""
