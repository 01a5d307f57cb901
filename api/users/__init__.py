"""The caller's own account, and the admin's view of all accounts."""
