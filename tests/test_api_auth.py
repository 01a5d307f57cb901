"""Authentication and accounts over HTTP, against a real PostgreSQL database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import ValidationError

from khalsi.db.engine import create_sync_engine
from khalsi.settings import Settings, parse_lifetime
from tests.api_helpers import API, PASSWORD, bearer, login, register, signed_up


def _db(settings: Settings) -> sa.Engine:
    return create_sync_engine(settings)


def test_register_stores_a_bcrypt_hash_and_never_returns_it(api_client: TestClient, api_settings: Settings) -> None:
    user = register(api_client, email="Alice@Example.com")
    assert user["email"] == "alice@example.com"  # one account per mailbox, whatever the case
    assert user["role"] == "user"
    assert "password" not in str(user)
    with _db(api_settings).connect() as connection:
        stored = connection.execute(sa.text("SELECT password_hash FROM users")).scalar_one()
    assert stored.startswith("$2b$12$")
    assert PASSWORD not in stored


def test_duplicate_email_is_a_conflict_and_keeps_the_first_account(
    api_client: TestClient, api_settings: Settings
) -> None:
    register(api_client, email="bob@example.com")
    again = api_client.post(f"{API}/auth/register", json={"email": "BOB@example.com", "password": "another password"})
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]
    login(api_client, email="bob@example.com")  # the original password still works
    with _db(api_settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM users")).scalar_one() == 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"email": "carol@example.com", "password": "short"}, "at least 10 characters"),
        ({"email": "carol@example.com", "password": "é" * 40}, "72 bytes"),
        ({"email": "not-an-email", "password": "long enough password"}, "email"),
        ({"email": "carol@example.com", "password": "long enough password", "role": "admin"}, "Extra inputs"),
        ({"email": "carol@example.com", "password": "long enough password", "username": "a b"}, "pattern"),
    ],
)
def test_bad_registrations_get_a_clear_422_and_store_nothing(
    api_client: TestClient, api_settings: Settings, body: dict[str, str], fragment: str
) -> None:
    response = api_client.post(f"{API}/auth/register", json=body)
    assert response.status_code == 422
    assert fragment in response.text
    with _db(api_settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM users")).scalar_one() == 0


def test_login_refuses_a_wrong_password_and_an_unknown_email_alike(api_client: TestClient) -> None:
    register(api_client, email="dave@example.com")
    wrong = api_client.post(f"{API}/auth/login", json={"email": "dave@example.com", "password": "not the password"})
    unknown = api_client.post(f"{API}/auth/login", json={"email": "nobody@example.com", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "wrong email or password"}


def test_me_needs_a_valid_access_token(api_client: TestClient, api_settings: Settings) -> None:
    user, headers = signed_up(api_client)
    me = api_client.get(f"{API}/users/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["id"] == user["id"]

    missing = api_client.get(f"{API}/users/me")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    tokens = login(api_client, email=user["email"])
    secret = api_settings.jwt.secret.get_secret_value()
    now = datetime.now(UTC)
    claims = {"iss": "khalsi", "sub": user["id"], "sid": str(uuid.uuid4()), "typ": "access", "jti": "x"}
    forged = {
        "garbage": "not-a-jwt",
        "refresh token as access": tokens["refresh_token"],
        "other key": jwt.encode({**claims, "iat": now, "exp": now + timedelta(hours=1)}, "x" * 32, algorithm="HS256"),
        "expired": jwt.encode(
            {**claims, "iat": now - timedelta(days=2), "exp": now - timedelta(days=1)}, secret, algorithm="HS256"
        ),
        "alg none": jwt.encode({**claims, "iat": now, "exp": now + timedelta(hours=1)}, None, algorithm="none"),
        "unknown session": jwt.encode(
            {**claims, "iat": now, "exp": now + timedelta(hours=1)}, secret, algorithm="HS256"
        ),
    }
    for what, token in forged.items():
        response = api_client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, what
    expired = api_client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {forged['expired']}"})
    assert "expired" in expired.json()["detail"]


def test_refresh_rotates_and_a_replayed_refresh_token_closes_the_session(api_client: TestClient) -> None:
    user = register(api_client)
    first = login(api_client, email=user["email"])
    assert first["expires_in"] == 7 * 24 * 3600  # the seed's JWT_EXPIRES_IN=7d
    assert first["refresh_expires_in"] == 30 * 24 * 3600
    second = api_client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert api_client.get(f"{API}/users/me", headers=bearer(rotated)).status_code == 200

    # The spent token comes back (a thief, or a client bug): the whole session is closed.
    replay = api_client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    assert "already used" in replay.json()["detail"]
    assert api_client.get(f"{API}/users/me", headers=bearer(rotated)).status_code == 401
    dead = api_client.post(f"{API}/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert dead.status_code == 401
    # Another login opens a fresh session.
    assert api_client.get(f"{API}/users/me", headers=bearer(login(api_client, email=user["email"]))).status_code == 200


def test_logout_ends_only_that_session(api_client: TestClient) -> None:
    user = register(api_client)
    laptop, phone = login(api_client, email=user["email"]), login(api_client, email=user["email"])
    assert api_client.post(f"{API}/auth/logout", headers=bearer(laptop)).status_code == 204
    assert api_client.get(f"{API}/users/me", headers=bearer(laptop)).status_code == 401
    assert api_client.post(f"{API}/auth/refresh", json={"refresh_token": laptop["refresh_token"]}).status_code == 401
    assert api_client.get(f"{API}/users/me", headers=bearer(phone)).status_code == 200


def test_preferences_merge_and_usernames_stay_unique(api_client: TestClient) -> None:
    _, headers = signed_up(api_client)
    other, other_headers = signed_up(api_client)
    assert api_client.patch(f"{API}/users/me", json={"username": "whale_42"}, headers=headers).status_code == 200
    taken = api_client.patch(f"{API}/users/me", json={"username": "whale_42"}, headers=other_headers)
    assert taken.status_code == 409
    api_client.patch(f"{API}/users/me", json={"preferences": {"currency": "eur", "theme": "dark"}}, headers=headers)
    merged = api_client.patch(f"{API}/users/me", json={"preferences": {"theme": None, "lang": "de"}}, headers=headers)
    assert merged.json()["preferences"] == {"currency": "eur", "lang": "de"}
    assert api_client.get(f"{API}/users/me", headers=other_headers).json()["preferences"] == {}
    assert other["username"] is None


def test_only_admins_list_users(api_client: TestClient, api_settings: Settings) -> None:
    user, headers = signed_up(api_client)
    signed_up(api_client)
    assert api_client.get(f"{API}/users", headers=headers).status_code == 403
    with _db(api_settings).begin() as connection:
        connection.execute(sa.text("UPDATE users SET role = 'admin' WHERE id = :id"), {"id": user["id"]})
    page = api_client.get(f"{API}/users", params={"limit": 1}, headers=headers)
    assert page.status_code == 200
    assert page.json()["total"] == 2
    assert len(page.json()["items"]) == 1
    assert api_client.get(f"{API}/users", params={"limit": 500}, headers=headers).status_code == 422


def test_token_lifetimes_are_validated() -> None:
    assert parse_lifetime("15m") == timedelta(minutes=15)
    assert parse_lifetime("7d") == timedelta(days=7)
    for bad in ("7", "0d", "1w", "-3h", ""):
        with pytest.raises(ValueError, match="not a lifetime"):
            parse_lifetime(bad)
    with pytest.raises(ValidationError, match="not a lifetime"):
        Settings(_env_file=None, jwt={"expires_in": "forever"})  # type: ignore[call-arg,arg-type]


def test_the_whole_account_cycle_runs_on_the_embedded_sqlite_default(settings: Settings, engine: sa.Engine) -> None:
    """``make run`` has no PostgreSQL and no Redis: accounts, tokens and limits still work."""
    from api.main import create_app

    with TestClient(create_app(settings)) as client:
        user, headers = signed_up(client)
        assert client.get(f"{API}/users/me", headers=headers).json()["email"] == user["email"]
        tokens = login(client, email=user["email"])
        rotated = client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert rotated.status_code == 200
        assert rotated.headers["x-ratelimit-store"] == "memory"
        assert client.post(f"{API}/auth/logout", headers=bearer(rotated.json())).status_code == 204


def test_a_bare_nan_in_a_body_is_a_422_not_a_500(api_client: TestClient) -> None:
    _, headers = signed_up(api_client)
    response = api_client.patch(
        f"{API}/users/me",
        content=b'{"username": NaN, "preferences": {"limit": Infinity}}',
        headers={**headers, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["input"] == "nan"


def test_read_only_routes_trust_a_recent_session_check_but_logout_reaches_every_process(
    api_settings: Settings,
) -> None:
    """Predictions skip the per-request session lookup; a logout still stops them on every API process."""
    import time

    from api.main import create_app

    prediction = f"{API}/predictions/bitcoin?horizon=1d"
    with TestClient(create_app(api_settings)) as first, TestClient(create_app(api_settings)) as second:
        assert second.portal is not None
        assert second.portal.call(second.app.state.live_hub.wait_until_live, 5.0)  # type: ignore[attr-defined]
        user = register(first)
        tokens = login(first, email=user["email"])
        assert second.get(prediction, headers=bearer(tokens)).status_code != 401  # checked once, now remembered
        # Make the memory outlive the test: only the broadcast can make the second process forget.
        second.app.state.open_sessions.ttl_seconds = 3600  # type: ignore[attr-defined]
        assert first.post(f"{API}/auth/logout", headers=bearer(tokens)).status_code == 204
        assert first.get(prediction, headers=bearer(tokens)).status_code == 401  # the same process: at once
        status = 0
        for _ in range(40):  # the other process hears of it through Redis
            status = second.get(prediction, headers=bearer(tokens)).status_code
            if status == 401:
                break
            time.sleep(0.05)
        assert status == 401


def test_the_open_session_memory_expires_and_stays_bounded() -> None:
    from api.auth.sessions import OpenSessions

    memory = OpenSessions(ttl_seconds=0.0, capacity=3)
    sessions = [uuid.uuid4() for _ in range(5)]
    memory.remember(sessions[0])
    assert not memory.is_open(sessions[0])  # a zero lifetime: always asks the database
    memory = OpenSessions(ttl_seconds=60, capacity=3)
    for session_id in sessions:
        memory.remember(session_id)
    assert len(memory) == 3
    assert not memory.is_open(sessions[0])
    assert memory.is_open(sessions[4])
    memory.forget(sessions[4])
    assert not memory.is_open(sessions[4])
