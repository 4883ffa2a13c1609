"""API keys: bearer tokens ``ml3_<prefix>_<secret>`` with one scope, read < submit < admin, each
including the ones before it. Only the token's sha256 is stored; the prefix is the key's visible
name (``ml3 keys list``, logs). ``authorize`` is what the routes' dependencies (app/api/deps.py) call.

Keys are required when the server listens beyond loopback (ML3_AUTH=auto, the default), or always
(ML3_AUTH=on); ML3_AUTH=off runs open. Reads stay open unless ML3_AUTH_READS=true.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Problem
from app.db.models import ApiKey, utcnow

if TYPE_CHECKING:
    from fastapi import Request

log = logging.getLogger("ml3.security")
SCOPES = ("read", "submit", "admin")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(db: Session, scope: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key (committed by the caller) and its token, which exists nowhere else afterwards."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    prefix = secrets.token_hex(4)
    token = f"ml3_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(prefix=prefix, hash=digest(token), scope=scope, name=name)
    db.add(key)
    db.flush()
    return key, token


def list_keys(db: Session, revoked: bool = False) -> list[ApiKey]:
    q = select(ApiKey).order_by(ApiKey.id)
    return list(db.scalars(q if revoked else q.where(ApiKey.revoked_at.is_(None))))


def revoke_key(db: Session, prefix_or_token: str) -> ApiKey | None:
    """Revoke by prefix (or by the whole token); None if no such key."""
    prefix = prefix_or_token.split("_")[1] if prefix_or_token.startswith("ml3_") else prefix_or_token
    key = db.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_enabled(settings: Settings) -> bool:
    if settings.auth != "auto":
        return settings.auth == "on"
    return not is_loopback(settings.host)


def announce(settings: Settings, Session) -> None:
    """Say loudly at start how the server is protected, and what is wrong with it."""
    where = settings.host
    if not auth_enabled(settings):
        if is_loopback(settings.host):
            log.warning("API keys are OFF: the server listens on %s only, so anyone on this machine can "
                        "submit jobs and change the registry. Set ML3_AUTH=on to require keys.", where)
        else:
            log.warning("!!! API keys are OFF (ML3_AUTH=off) on %s: ANYONE who can reach this address "
                        "can run jobs and change the registry. Use it only on a trusted network. !!!", where)
        return
    with Session() as db:
        n = db.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None)))
    reads = "reads are open (ML3_AUTH_READS=true keys them too)"
    if settings.auth_reads:
        reads = "reads need a key too"
    log.warning("API keys are required for writes on %s; %s; %d active keys.", where, reads, n)
    if not n:
        log.warning("no API key exists yet: create one with `ml3 keys create --scope admin`")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key, or an anonymous client (an open server or an open read)."""

    key_id: int | None
    prefix: str | None
    scope: str
    client: str  # rate limits count per key, else per client address

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


_KEY = select(ApiKey.id, ApiKey.prefix, ApiKey.scope, ApiKey.revoked_at)


def _lookup(request: Request, token: str):
    """The key row of a token, once per request (a route may check two scopes)."""
    cached = getattr(request.state, "ml3_key", None)
    if cached is not None and cached[0] == token:
        return cached[1]
    with request.app.state.engine.connect() as conn:
        row = conn.execute(_KEY.where(ApiKey.hash == digest(token))).first()
    request.state.ml3_key = (token, row)
    return row


def authorize(request: Request, scope: str, token: str | None) -> Principal:
    """The caller, if allowed ``scope``; else a 401 (no, unknown or revoked key) or 403 (scope)."""
    state = request.app.state
    client = request.client.host if request.client else "unknown"
    if not state.auth_enabled:
        return Principal(None, None, "admin", client)
    open_read = scope == "read" and not state.settings.auth_reads
    challenge = {"WWW-Authenticate": "Bearer"}
    if token is None:
        if open_read:
            return Principal(None, None, "read", client)
        raise Problem(401, "missing_key", f"this request needs an API key with scope {scope} or above: "
                      "send Authorization: Bearer <key> (from `ml3 keys create`)", headers=challenge)
    row = _lookup(request, token)
    if row is None:
        raise Problem(401, "invalid_key", "the API key is not known to this server", headers=challenge)
    if row.revoked_at is not None:
        raise Problem(401, "revoked_key", f"the API key {row.prefix} was revoked", headers=challenge)
    who = Principal(row.id, row.prefix, row.scope, f"key:{row.prefix}")
    if not who.allows(scope):
        raise Problem(403, "insufficient_scope", f"the API key {row.prefix} has scope {row.scope}; this "
                      f"request needs {scope} or above",
                      headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'})
    return who
