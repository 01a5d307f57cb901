"""Small helpers for product-API tests: accounts and their tokens, through the real endpoints."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

API = "/api/v1"
PASSWORD = "correct horse battery"


def register(client: TestClient, *, email: str | None = None, password: str = PASSWORD) -> dict[str, Any]:
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    response = client.post(f"{API}/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def login(client: TestClient, *, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post(f"{API}/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def signed_up(client: TestClient, *, email: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """A new account and the headers that authenticate as it."""
    user = register(client, email=email)
    return user, bearer(login(client, email=user["email"]))
