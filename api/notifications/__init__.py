"""Notifications: what was sent to whom, by e-mail (SMTP) or webhook, and its delivery state."""
