"""Sans-IO SASL mechanisms, server and client side."""
