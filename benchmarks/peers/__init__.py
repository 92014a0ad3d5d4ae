"""Peers' MST and AIM synthesizers, run in their own environments (see README.md)."""
