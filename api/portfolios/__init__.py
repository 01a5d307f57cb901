"""Portfolios: the caller's positions, valued at the latest stored prices."""
