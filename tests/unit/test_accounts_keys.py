"""API keys against a real store (SQLite and PostgreSQL): roles, expiry, revocation (at once,
and for good), listings that show prefixes and never a key or its hash,
and revoke by id, prefix or the key itself."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from sbx.core import accounts
from sbx.core.errors import Conflict, NotFound, Unauthorized
from sbx.shared import ids
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import ApiKey


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    d = Database(db_url)
    await d.migrate()
    async with d.transaction() as s:
        await accounts.create_org(s, "alpha")
        await accounts.create_org(s, "beta")
    try:
        yield d
    finally:
        await d.close()


async def _key(db: Database, org: str = "alpha", role: str = "member",
               expires_in: timedelta | None = None) -> str:
    async with db.transaction() as s:
        at = repo.now() + expires_in if expires_in is not None else None
        return await accounts.create_key(s, org, role=role, expires_at=at)


async def _auth(db: Database, key: str | None) -> accounts.KeyAuth:
    async with db.session() as s:
        return await accounts.authenticate_key(s, key)


async def _refused(db: Database, key: str | None) -> str:
    with pytest.raises(Unauthorized) as info:
        await _auth(db, key)
    assert info.value.status == 401
    return info.value.message


async def test_roles_and_the_organisation_a_key_speaks_for(db: Database) -> None:
    member = await _key(db)
    admin = await _key(db, "beta", role="admin")
    assert member.startswith("sbx_") and member != admin
    m = await _auth(db, member)
    assert (m.org.name, m.role, m.is_admin) == ("alpha", "member", False)
    a = await _auth(db, admin)
    assert (a.org.name, a.role, a.is_admin) == ("beta", "admin", True)
    # authenticate() still answers the organisation (what every route uses).
    async with db.session() as s:
        org = await accounts.authenticate(s, admin)
    assert org.name == "beta" and org.id == a.org.id
    assert await _refused(db, None) == "Missing API key"
    assert await _refused(db, "") == "Missing API key"
    assert await _refused(db, member + "x") == "Invalid API key"


async def test_create_key_refuses_bad_input_and_writes_nothing(db: Database) -> None:
    async with db.transaction() as s:
        with pytest.raises(ValueError, match="role"):
            await accounts.create_key(s, "alpha", role="root")
        with pytest.raises(ValueError, match="future"):
            await accounts.create_key(s, "alpha", expires_at=repo.now() - timedelta(seconds=1))
        with pytest.raises(ValueError, match="time zone"):
            await accounts.create_key(s, "alpha",
                                      expires_at=repo.now().replace(tzinfo=None) + timedelta(1))
        with pytest.raises(NotFound):
            await accounts.create_key(s, "no-such-org")
    async with db.session() as s:
        assert await accounts.list_keys(s) == []


async def test_expired_key_is_refused(db: Database) -> None:
    key = await _key(db, expires_in=timedelta(hours=1))
    assert (await _auth(db, key)).org.name == "alpha"
    # The hour passes (the row is moved back rather than the test waiting).
    async with db.transaction() as s:
        await s.execute(update(ApiKey).where(ApiKey.key_hash == ids.hash_key(key))
                        .values(expires_at=repo.now() - timedelta(seconds=1)))
    assert await _refused(db, key) == "API key expired"
    async with db.session() as s:
        [row] = await accounts.list_keys(s, "alpha")
    assert row["state"] == "expired" and row["revoked_at"] is None
    assert row["expires_at"].endswith("Z")


async def test_revoked_key_is_refused_at_once_and_stays_revoked(db: Database) -> None:
    key = await _key(db, role="admin", expires_in=timedelta(days=1))
    other = await _key(db)
    await _auth(db, key)
    async with db.session() as s:
        [listed, _] = await accounts.list_keys(s, "alpha")
    async with db.transaction() as s:
        first = await accounts.revoke_key(s, listed["id"])
    assert first["state"] == "revoked" and first["revoked_at"]
    assert await _refused(db, key) == "API key revoked"
    # Again: no error, and the first revocation's time stands.
    async with db.transaction() as s:
        again = await accounts.revoke_key(s, listed["prefix"])
    assert again == first
    # Revoked wins over expired, and the organisation's other key still works.
    async with db.transaction() as s:
        await s.execute(update(ApiKey).where(ApiKey.id == listed["id"])
                        .values(expires_at=repo.now() - timedelta(seconds=1)))
    assert await _refused(db, key) == "API key revoked"
    assert (await _auth(db, other)).role == "member"


async def test_list_shows_prefixes_never_keys_or_hashes(db: Database) -> None:
    plain = [await _key(db), await _key(db, "beta", role="admin"),
             await _key(db, expires_in=timedelta(days=30))]
    async with db.session() as s:
        everything = await accounts.list_keys(s)
        alpha = await accounts.list_keys(s, "alpha")
        hashes = set((await s.execute(select(ApiKey.key_hash))).scalars())
        with pytest.raises(NotFound):
            await accounts.list_keys(s, "no-such-org")
    assert hashes == {ids.hash_key(k) for k in plain}
    assert len(everything) == 3 and [r["org"] for r in alpha] == ["alpha", "alpha"]
    fields = {"id", "org", "prefix", "role", "created_at", "expires_at", "revoked_at", "state"}
    dumped = json.dumps(everything)
    for row in everything:
        assert set(row) == fields
        assert row["state"] == "active"
    for key in plain:
        assert key not in dumped and ids.hash_key(key) not in dumped
        assert key[:12] in dumped
    assert sorted(r["prefix"] for r in everything) == sorted(k[:12] for k in plain)
    assert [r["role"] for r in everything] == ["member", "admin", "member"]
    assert [r["expires_at"] is None for r in everything] == [True, True, False]


async def test_revoke_by_prefix_whole_key_and_ambiguity(db: Database) -> None:
    # Two keys that share their stored prefix (made so on purpose).
    twins = ["sbx_SAMEPREFIXaaaa", "sbx_SAMEPREFIXbbbb"]
    async with db.transaction() as s:
        org = await repo.org_by_name(s, "alpha")
        assert org is not None
        for i, k in enumerate(twins):
            s.add(ApiKey(id=f"key_twin{i}", org_id=org.id, key_hash=ids.hash_key(k),
                         prefix=k[:12], created_at=repo.now()))
    lone = await _key(db, "beta")
    async with db.transaction() as s:
        with pytest.raises(Conflict) as info:
            await accounts.revoke_key(s, "sbx_SAMEPREF")
        assert "key_twin0" in info.value.message and "key_twin1" in info.value.message
        with pytest.raises(ValueError, match="at least 8"):
            await accounts.revoke_key(s, "sbx_")
        with pytest.raises(ValueError):
            await accounts.revoke_key(s, "  ")
        with pytest.raises(NotFound):
            await accounts.revoke_key(s, "key_nothere")
        # LIKE wildcards in the text match only themselves.
        with pytest.raises(NotFound):
            await accounts.revoke_key(s, "sbx_%%%%%%%%")
    # Nothing was revoked by the refusals.
    async with db.session() as s:
        assert {r["state"] for r in await accounts.list_keys(s)} == {"active"}
    async with db.transaction() as s:
        # The whole key names one of the twins; a prefix names a lone key.
        assert (await accounts.revoke_key(s, twins[0]))["id"] == "key_twin0"
        assert (await accounts.revoke_key(s, lone[:12]))["org"] == "beta"
    assert await _refused(db, twins[0]) == "API key revoked"
    assert (await _auth(db, twins[1])).org.name == "alpha"
    assert await _refused(db, lone) == "API key revoked"
