"""The loss registry: names, integer versions, movable aliases, tags.

A loss id in a URL is ``name`` (latest version), ``name:3`` (version 3) or ``name@alias``; it is
resolved on every request, so a client following ``name@production`` sees an alias move at once.
Evaluate may reuse a resolution for ``resolve_cache_seconds``: a change committed by this process
drops every such cache here at once (see ``FastResolver``); one made by another process is seen
after at most that long.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Problem, invalid, not_found
from app.db.models import MAX_ID, Loss, LossAlias, LossTag, LossVersion
from app.db.session import Unreadable
from app.services.ids import is_digits
from ml3core.artifact import Bundle
from ml3core.portable import LossBundleError, bundle_sha256, parse_bundle

# matched with fullmatch: "$" would also match before a final newline, letting "name\n" through
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


def check_name(name: str, loc: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise invalid(loc, f"{name!r} is not a loss name (letters, digits, '.', '_', '-'; at most 64)")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias) or alias == "latest":
        raise invalid("alias", f"{alias!r} is not an alias (a letter, then letters, digits, '_', '-'; "
                      "'latest' is reserved)")
    return alias


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    alias: str | None = None


def parse_ref(text: str) -> Ref:
    if "@" in text:
        name, alias = text.split("@", 1)
        check_name(name, "loss")
        if alias == "latest":
            return Ref(name)
        if not ALIAS_RE.fullmatch(alias):
            raise invalid("loss", f"bad alias in {text!r}")
        return Ref(name, alias=alias)
    if ":" in text:
        name, version = text.split(":", 1)
        check_name(name, "loss")
        if not is_digits(version) or not 1 <= int(version) <= MAX_ID:
            raise invalid("loss", f"bad version in {text!r}: ASCII digits, 1 to {MAX_ID}")
        return Ref(name, version=int(version))
    return Ref(check_name(text, "loss"))


@dataclass(frozen=True)
class Resolved:
    id: int  # loss_versions.id
    name: str
    version: int
    sha256: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


# built once: resolving runs on every evaluate request, and building a query costs more than running it
_BY_NAME = (select(LossVersion.id, Loss.name, LossVersion.version, LossVersion.sha256)
            .join(Loss, Loss.id == LossVersion.loss_id).where(Loss.name == bindparam("name")))
_LATEST = _BY_NAME.order_by(LossVersion.version.desc()).limit(1)
_VERSION = _BY_NAME.where(LossVersion.version == bindparam("version"))
_ALIAS = (_BY_NAME.join(LossAlias, (LossAlias.version_id == LossVersion.id) & (LossAlias.loss_id == Loss.id))
          .where(LossAlias.alias == bindparam("alias")))


_QUERIES = {"latest": _LATEST, "version": _VERSION, "alias": _ALIAS}


def _query_of(text: str) -> tuple[str, dict]:
    """Which of ``_QUERIES`` resolves a loss id, and its parameters."""
    ref = parse_ref(text)
    if ref.alias:
        return "alias", {"name": ref.name, "alias": ref.alias}
    if ref.version:
        return "version", {"name": ref.name, "version": ref.version}
    return "latest", {"name": ref.name}


def resolve(db: Session | Connection, text: str) -> Resolved:
    """The version a loss id points at now (404 if none). Reads only small columns."""
    key, params = _query_of(text)
    row = db.execute(_QUERIES[key], params).first()
    if row is None:
        raise not_found(f"loss {text!r}")
    return Resolved(*row)


# -- what this process changed: resolution caches made before a change are stale ----------------------
_changes = 0  # registry changes committed by this process
_changes_lock = threading.Lock()
_CHANGED = "ml3_registry_changed"


def _mark_changed(db: Session) -> None:
    """``db`` changes what a loss id resolves to; counted once it commits (not before: a resolution
    made in between would still read the old row and be cached as fresh)."""
    db.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _count_change(session: Session) -> None:
    global _changes
    if session.info.pop(_CHANGED, False):
        with _changes_lock:
            _changes += 1


class FastResolver:
    """``resolve`` for the evaluate hot path: the same prepared queries over one raw DB-API
    connection per thread, skipping the ORM and the pool (a quarter of a small request's time).

    With ``ttl`` > 0 a resolution is reused for ``ttl`` seconds unless this process has committed a
    registry change since it was made (``register``, ``set_alias``, ``delete_alias``), so a client
    that moves an alias through this API sees it on its next request. Changes made by other
    processes (other API workers, the runner registering a job's version) show after at most ``ttl``.
    Unknown ids are never cached."""

    def __init__(self, engine, ttl: float = 0.0, size: int = 4096):
        self.engine, self.local = engine, threading.local()
        self.ttl, self.size, self.cache = ttl, size, {}  # text -> (Resolved, _changes, expiry)
        self.sql = {k: q.compile(dialect=engine.dialect) for k, q in _QUERIES.items()}

    def __call__(self, text: str) -> Resolved:
        if self.ttl <= 0:
            return self.query(text)
        hit = self.cache.get(text)
        if hit is not None and hit[1] == _changes and time.monotonic() < hit[2]:
            return hit[0]
        changes = _changes  # read before the query: a change committed during it makes this entry stale
        resolved = self.query(text)
        if len(self.cache) >= self.size:
            self.cache.clear()
        self.cache[text] = (resolved, changes, time.monotonic() + self.ttl)
        return resolved

    def query(self, text: str) -> Resolved:
        key, params = _query_of(text)
        compiled = self.sql[key]
        params = compiled.construct_params(params)
        if compiled.positional:
            params = tuple(params[k] for k in compiled.positiontup)
        conn = getattr(self.local, "conn", None) or self.engine.raw_connection()
        self.local.conn = None  # not kept if the query fails: the next call connects afresh
        cur = conn.cursor()
        try:
            cur.execute(compiled.string, params)
            row = cur.fetchone()
            conn.rollback()  # end the read (PostgreSQL opened a transaction)
        except Exception:
            conn.invalidate()
            raise
        finally:
            cur.close()
        self.local.conn = conn
        if row is None:
            raise not_found(f"loss {text!r}")
        return Resolved(*row)


def get_loss(db: Session, name: str) -> Loss:
    loss = db.scalar(select(Loss).where(Loss.name == check_name(name, "loss")))
    if loss is None:
        raise not_found(f"loss {name!r}")
    return loss


def load_bundle(db: Session | Connection, version_id: int) -> Bundle:
    """The stored bundle, checked before anyone loads or downloads it: the weights and the spec must
    hash to the sha256 registered with the version (and named in the spec), and parse as safetensors +
    JSON. A version registered before bundles carried a whole ``sha256`` is checked on its weights."""
    q = (select(LossVersion.weights, LossVersion.spec, LossVersion.sha256, Loss.name, LossVersion.version)
         .join(Loss, Loss.id == LossVersion.loss_id).where(LossVersion.id == version_id))
    weights, spec, sha256, name, version = db.execute(q).one()
    bundle = Bundle(weights, spec)
    try:
        if not readable(spec):
            raise LossBundleError("its loss.json no longer parses as a JSON object")
        actual = hashlib.sha256(weights).hexdigest()
        if spec.get("weights_sha256") != actual:
            raise LossBundleError(f"weights sha256 {actual[:12]}… differ from the spec's")
        whole = bundle_sha256(weights, spec) if "sha256" in spec else actual
        if whole != sha256 or spec.get("sha256", whole) != sha256:
            raise LossBundleError(f"bundle sha256 {whole[:12]}… differs from the registered {sha256[:12]}…")
        parse_bundle(bundle.files)
    except (LossBundleError, AttributeError) as e:
        raise corrupt(name, version, e) from None
    return bundle


def readable(spec) -> bool:
    """Whether a stored loss.json still is a JSON object (not one damaged in the database)."""
    return isinstance(spec, dict) and not isinstance(spec, Unreadable)


def corrupt(name: str, version: int, why) -> Problem:
    """The answer for a version whose stored bundle fails its check: that version alone is refused."""
    logging.getLogger("ml3.registry").error("loss %s:%s refused: %s", name, version, why)
    return Problem(500, "bundle_corrupt", f"the stored bundle of loss {name}:{version} fails its integrity "
                   f"check and is not served: {why}; restore the row from a backup, or register the loss again")


def register(db: Session, name: str, bundle: Bundle, job_id: int | None, metrics: dict | None,
             description: str | None = None) -> LossVersion:
    """Add the next version of ``name`` in the caller's transaction. The unique job_id makes a
    second registration by the same job fail with IntegrityError."""
    if description is not None:
        check_description(description)
    family = bundle.spec.get("task_family")
    loss = db.scalar(select(Loss).where(Loss.name == name))
    if loss is None:
        loss = Loss(name=name)
        db.add(loss)
        db.flush()
    last = db.scalar(select(func.max(LossVersion.version)).where(LossVersion.loss_id == loss.id)) or 0
    version = LossVersion(loss_id=loss.id, version=last + 1, job_id=job_id, sha256=bundle.sha256,
                          weights=bundle.weights, spec=bundle.spec, metrics=metrics,
                          family=family if isinstance(family, str) and len(family) <= 64 else None,
                          description=description)
    db.add(version)
    db.flush()
    _mark_changed(db)
    return version


def commit_upsert(db: Session, change) -> None:
    """``change(db)`` (a set_alias or set_tag) committed. Two requests creating the same new row both
    find none and both insert: the later one's IntegrityError is rolled back and ``change`` runs again,
    now finding the row and updating it, so every request succeeds."""
    for attempt in range(3):
        try:
            change(db)
            db.commit()
            return
        except IntegrityError:
            db.rollback()
            if attempt == 2:
                raise


def set_alias(db: Session, name: str, alias: str, version: int) -> LossAlias:
    loss = get_loss(db, name)
    check_alias(alias)
    q = select(LossVersion).where(LossVersion.loss_id == loss.id, LossVersion.version == version)
    target = db.scalar(q)
    if target is None:
        raise Problem(422, "unknown_version", f"version: {name} has no version {version}")
    row = db.get(LossAlias, (loss.id, alias))
    if row is None:
        row = LossAlias(loss_id=loss.id, alias=alias, version_id=target.id)
        db.add(row)
    else:
        row.version_id = target.id
    _mark_changed(db)
    return row


def delete_alias(db: Session, name: str, alias: str) -> None:
    loss = get_loss(db, name)
    row = db.get(LossAlias, (loss.id, alias))
    if row is None:
        raise not_found(f"alias {name}@{alias}")
    db.delete(row)
    _mark_changed(db)


MAX_DESCRIPTION = 20_000


def check_description(text) -> None:
    if not isinstance(text, str) or len(text) > MAX_DESCRIPTION or "\x00" in text:  # PostgreSQL's text holds no NUL
        raise invalid("description", f"a string of at most {MAX_DESCRIPTION} characters, without NUL")


def set_description(db: Session, version_id: int, text: str | None) -> None:
    """A version's description (markdown; None or "" removes it), in the caller's transaction."""
    if text is not None:
        check_description(text)
    db.get(LossVersion, version_id).description = text or None


def tag_value_ok(value) -> bool:
    return isinstance(value, str) and len(value) <= 256 and "\x00" not in value  # PostgreSQL's text holds no NUL


def set_tag(db: Session, version_id: int, key: str, value: str) -> None:
    if not isinstance(key, str) or not TAG_RE.fullmatch(key):
        raise invalid("key", f"{key!r} is not a tag key")
    if not tag_value_ok(value):
        raise invalid("value", "a string of at most 256 characters, without NUL")
    row = db.get(LossTag, (version_id, key))
    if row is None:
        db.add(LossTag(version_id=version_id, key=key, value=value))
    else:
        row.value = value


def delete_tag(db: Session, version_id: int, key: str) -> None:
    row = db.get(LossTag, (version_id, key))
    if row is None:
        raise not_found(f"tag {key!r}")
    db.delete(row)
