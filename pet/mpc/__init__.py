"""Secure multiparty computation: one CrypTen party process per site, a dealer process
that holds no data, and the programs the parties run together."""
