"""Alerts: conditions on prices and predictions that notify their owner when they hold."""
