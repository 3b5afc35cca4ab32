"""Feast definitions for xinterest; `feast` CLI users run it from a Feast repo folder.

Only definitions live here (``feast apply`` imports every .py): no work at import.
"""
