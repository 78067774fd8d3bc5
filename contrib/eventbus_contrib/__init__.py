"""Integrations for eventbus, one module each, each behind its own extra.

Importing this package imports nothing: each integration imports its own library only
when its module is imported.
"""
