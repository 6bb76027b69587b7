"""Local accounts, API tokens and web sessions, each change written to the audit log.

Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes,
4 lanes; measured 0.2 s per hash or verify on the shared 2-core machine, so a
login costs that and an offline guess of a stolen hash costs the same; logins are
also throttled per user and address in the web app).  API tokens and session ids
are 32 random bytes, so a plain SHA-256 of them is stored: there is nothing to
guess, and a stolen table yields no usable token.  Tokens are shown once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.timeutil import utcnow
from twin.audit import record
from twin.errors import AccountError, UnknownUser
from twin.models import ApiToken, User, WebSession

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "Principal",
    "add_user",
    "authenticate_password",
    "authenticate_token",
    "create_token",
    "end_session",
    "list_tokens",
    "list_users",
    "open_session",
    "reset_password",
    "resolve_session",
    "revoke_token",
    "set_disabled",
    "set_role",
]

ROLES = ("regulator", "grid", "noc", "viewer", "admin")
MIN_PASSWORD_LENGTH = 10
TOKEN_PREFIX = "stw_"

_hasher = PasswordHasher()
# Verified against when the user does not exist, so the answer takes as long either way.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the account behind a session or a token."""

    user_id: int
    username: str
    role: str
    lang: str | None
    via: str  # "session" or "token"
    csrf_token: str | None = None


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    return role


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def _user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UnknownUser(f"user {username!r}")
    return user


def user_dict(user: User) -> dict[str, Any]:
    """A user as shown to people and in the audit log; never the hash."""
    return {"username": user.username, "display_name": user.display_name, "role": user.role,
            "lang": user.lang, "disabled": user.disabled, "created_at": user.created_at,
            "updated_at": user.updated_at}


def add_user(session: Session, username: str, role: str, password: str, *, actor: str,
             display_name: str | None = None, lang: str | None = None,
             client_ip: str | None = None) -> dict[str, Any]:
    username = username.strip()
    if not username or len(username) > 64 or not username.isprintable() or " " in username:
        raise AccountError("a user name is 1-64 printable characters without spaces")
    _check_role(role)
    _check_password(password)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} already exists")
    now = utcnow()
    user = User(username=username, role=role, password_hash=_hasher.hash(password),
                display_name=display_name, lang=lang, disabled=False, created_at=now,
                updated_at=now)
    session.add(user)
    session.flush()
    record(session, actor=actor, action="user.add", target_type="user", target_id=username,
           after=user_dict(user), client_ip=client_ip)
    return user_dict(user)


def list_users(session: Session) -> list[dict[str, Any]]:
    return [user_dict(u) for u in session.scalars(select(User).order_by(User.username))]


def set_role(session: Session, username: str, role: str, *, actor: str,
             client_ip: str | None = None) -> dict[str, Any]:
    _check_role(role)
    user = _user(session, username)
    before = user_dict(user)
    user.role = role
    user.updated_at = utcnow()
    record(session, actor=actor, action="user.set_role", target_type="user", target_id=username,
           before=before, after=user_dict(user), client_ip=client_ip)
    return user_dict(user)


def set_disabled(session: Session, username: str, disabled: bool, *, actor: str,
                 client_ip: str | None = None) -> dict[str, Any]:
    """Disable (or re-enable) an account; disabling also ends its web sessions."""
    user = _user(session, username)
    before = user_dict(user)
    user.disabled = disabled
    user.updated_at = utcnow()
    if disabled:
        session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    record(session, actor=actor, action="user.disable" if disabled else "user.enable",
           target_type="user", target_id=username, before=before, after=user_dict(user),
           client_ip=client_ip)
    return user_dict(user)


def reset_password(session: Session, username: str, password: str, *, actor: str,
                   client_ip: str | None = None) -> dict[str, Any]:
    """A new password; the user's web sessions end (the audit entry holds no hash)."""
    _check_password(password)
    user = _user(session, username)
    user.password_hash = _hasher.hash(password)
    user.updated_at = utcnow()
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    record(session, actor=actor, action="user.reset_password", target_type="user",
           target_id=username, client_ip=client_ip)
    return user_dict(user)


def authenticate_password(session: Session, username: str, password: str) -> User | None:
    """The enabled user whose password this is, or ``None`` (same work either way)."""
    user = session.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def create_token(session: Session, username: str, name: str, *, actor: str,
                 client_ip: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(token, info)``: the token itself is returned here and never again."""
    user = _user(session, username)
    if not name.strip():
        raise AccountError("a token needs a name (what it is for)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name.strip(), token_sha256=_sha256(token),
                   prefix=token[:10], created_at=utcnow())
    session.add(row)
    session.flush()
    info = _token_dict(row, user.username)
    record(session, actor=actor, action="token.create", target_type="token", target_id=row.id,
           after=info, client_ip=client_ip)
    return token, info


def _token_dict(row: ApiToken, username: str | None) -> dict[str, Any]:
    return {"id": row.id, "username": username, "name": row.name, "prefix": row.prefix,
            "created_at": row.created_at, "last_used_at": row.last_used_at,
            "revoked_at": row.revoked_at}


def list_tokens(session: Session, username: str | None = None) -> list[dict[str, Any]]:
    q = (select(ApiToken, User.username).join(User, User.id == ApiToken.user_id)
         .order_by(ApiToken.id))
    if username is not None:
        q = q.where(User.username == username)
    return [_token_dict(t, u) for t, u in session.execute(q)]


def revoke_token(session: Session, token_id: int, *, actor: str, owner: str | None = None,
                 client_ip: str | None = None) -> dict[str, Any]:
    """Revoke a token; with ``owner``, only one of that user's (a user revoking their own)."""
    row = session.get(ApiToken, token_id)
    username = session.scalar(select(User.username).where(User.id == row.user_id)) if row else None
    if row is None or (owner is not None and username != owner):
        raise UnknownUser(f"token {token_id}")
    before = _token_dict(row, username)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    record(session, actor=actor, action="token.revoke", target_type="token", target_id=token_id,
           before=before, after=_token_dict(row, username), client_ip=client_ip)
    return _token_dict(row, username)


def authenticate_token(session: Session, token: str, *,
                       now: datetime | None = None) -> Principal | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == _sha256(token)))
    if row is None or row.revoked_at is not None:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    now = now or utcnow()
    # Written at most once a minute: a busy machine client must not turn reads into writes.
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now
    return Principal(user.id, user.username, user.role, user.lang, "token")


def open_session(session: Session, user: User, lifetime_s: float, *,
                 client_ip: str | None = None) -> tuple[str, str]:
    """``(session id for the cookie, CSRF token)`` of a new web session for ``user``."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    sid = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(WebSession(id_sha256=_sha256(sid), user_id=user.id, csrf_token=csrf,
                           created_at=now, expires_at=now + timedelta(seconds=lifetime_s),
                           client_ip=client_ip))
    record(session, actor=user.username, action="user.login", target_type="user",
           target_id=user.username, client_ip=client_ip)
    return sid, csrf


def resolve_session(session: Session, sid: str, *, now: datetime | None = None) -> Principal | None:
    row = session.get(WebSession, _sha256(sid))
    if row is None or row.expires_at <= (now or utcnow()):
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return Principal(user.id, user.username, user.role, user.lang, "session", row.csrf_token)


def end_session(session: Session, sid: str, *, client_ip: str | None = None) -> None:
    row = session.get(WebSession, _sha256(sid))
    if row is None:
        return
    user = session.get(User, row.user_id)
    session.delete(row)
    if user is not None:
        record(session, actor=user.username, action="user.logout", target_type="user",
               target_id=user.username, client_ip=client_ip)
