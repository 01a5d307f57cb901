"""Authentication: registration, password login, JWT access tokens and rotating refresh sessions."""
