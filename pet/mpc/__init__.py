"""Secure multiparty computation: one CrypTen party process per site, a dealer process
that holds no data, the mutually authenticated TLS channel they talk over, and the
programs the parties run together."""
