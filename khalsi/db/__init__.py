"""Relational schema, engines and migrations."""
