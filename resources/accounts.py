"""Accounts of the review web app: users and roles, Argon2 password hashes, sessions, API tokens.

Passwords are stored as Argon2id hashes (argon2-cffi defaults). Session and API tokens are random
256-bit strings handed to the client once; the catalog keeps only their sha256, so a copy of the
database opens no session.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select

from ml_models.errors import InputError
from resources.catalog import ApiToken, Catalog, User, WebSession, utcnow

ROLES = ("admin", "surgeon", "reviewer", "data_scientist")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 8
TOKEN_PREFIX = "surg_"

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs the same time as a wrong
# password and response times do not reveal which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(ts: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes (stored as UTC).
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Principal:
    """The authenticated user of one request."""

    id: int
    name: str
    role: str
    session_id: str | None = None  # set when authenticated by a session cookie
    csrf_token: str | None = None


@dataclass
class Accounts:
    """Users, sessions and tokens over the catalog."""

    catalog: Catalog
    session_ttl: dt.timedelta = dt.timedelta(hours=12)

    # -- users -----------------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str) -> User:
        """Create a user.

        Raises:
            InputError: a malformed name, an unknown role, a short password or a taken name.
        """
        if not _NAME_RE.match(name or ""):
            raise InputError(
                "a user name is 2-64 characters of lower-case letters, digits, '.', '_' or '-'."
            )
        if role not in ROLES:
            raise InputError(f"role {role!r} is unknown; use one of {', '.join(ROLES)}.")
        if len(password or "") < MIN_PASSWORD:
            raise InputError(f"the password is too short; use at least {MIN_PASSWORD} characters.")
        with self.catalog.session() as s:
            if s.scalars(select(User).where(User.name == name)).first() is not None:
                raise InputError(f"user {name} exists already; pick another name.")
            user = User(name=name, role=role, password_hash=_hasher.hash(password))
            s.add(user)
        return user

    def list_users(self) -> list[User]:
        """Every user, by name."""
        with self.catalog.session() as s:
            return list(s.scalars(select(User).order_by(User.name)))

    def get_user(self, name: str) -> User | None:
        """One user by name, or None."""
        with self.catalog.session() as s:
            return s.scalars(select(User).where(User.name == name)).first()

    def set_disabled(self, name: str, disabled: bool = True) -> User:
        """Disable (or re-enable) a user; disabling also ends their sessions and tokens."""
        with self.catalog.session() as s:
            user = s.scalars(select(User).where(User.name == name)).first()
            if user is None:
                raise InputError(f"there is no user {name}; list them with `surg users list`.")
            user.disabled = disabled
            if disabled:
                s.execute(delete(WebSession).where(WebSession.user_id == user.id))
                for token in s.scalars(select(ApiToken).where(ApiToken.user_id == user.id)):
                    token.revoked_at = token.revoked_at or utcnow()
            return user

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs and the account is enabled, else None."""
        user = self.get_user(name) if _NAME_RE.match(name or "") else None
        try:
            _hasher.verify(user.password_hash if user else _DUMMY_HASH, password or "")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if user is None or user.disabled:
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            # Parameters were raised since this hash was made: upgrade it while we know the
            # password.
            with self.catalog.session() as s:
                row = s.get(User, user.id)
                if row is not None:
                    row.password_hash = _hasher.hash(password)
        return user

    # -- sessions ---------------------------------------------------------------------------

    def open_session(self, user: User, source: str | None = None) -> tuple[str, Principal]:
        """Start a session; returns the cookie token (shown once) and the principal."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        with self.catalog.session() as s:
            # Expired sessions are swept here rather than by a background job.
            s.execute(delete(WebSession).where(WebSession.expires_at < now))
            s.add(
                WebSession(
                    id=_digest(token),
                    user_id=user.id,
                    csrf_token=csrf,
                    source=(source or None) and source[:128],
                    created_at=now,
                    expires_at=now + self.session_ttl,
                )
            )
        return token, Principal(user.id, user.name, user.role, _digest(token), csrf)

    def session_principal(self, token: str) -> Principal | None:
        """The principal of a live session token, else None."""
        if not token or len(token) > 256:
            return None
        with self.catalog.session() as s:
            row = s.get(WebSession, _digest(token))
            if row is None or _aware(row.expires_at) < utcnow():
                return None
            user = s.get(User, row.user_id)
            if user is None or user.disabled:
                return None
            return Principal(user.id, user.name, user.role, row.id, row.csrf_token)

    def close_session(self, session_id: str) -> None:
        """End a session (logout)."""
        with self.catalog.session() as s:
            s.execute(delete(WebSession).where(WebSession.id == session_id))

    # -- API tokens -------------------------------------------------------------------------

    def create_token(self, name: str, label: str = "script") -> tuple[str, ApiToken]:
        """A new bearer token for ``name``; the token text is returned once and not stored."""
        user = self.get_user(name)
        if user is None or user.disabled:
            raise InputError(f"there is no enabled user {name}; add one with `surg users add`.")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = ApiToken(user_id=user.id, label=(label or "script")[:64], token_hash=_digest(token))
        with self.catalog.session() as s:
            s.add(row)
        return token, row

    def list_tokens(self, user_id: int) -> list[ApiToken]:
        """A user's tokens (revoked ones included), newest first."""
        with self.catalog.session() as s:
            q = select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id.desc())
            return list(s.scalars(q))

    def revoke_token(self, user_id: int, token_id: int) -> bool:
        """Revoke one of a user's tokens; False if they have no such token."""
        with self.catalog.session() as s:
            row = s.get(ApiToken, token_id)
            if row is None or row.user_id != user_id:
                return False
            row.revoked_at = row.revoked_at or utcnow()
            return True

    def token_principal(self, token: str) -> Principal | None:
        """The principal of a live bearer token, else None."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            return None
        with self.catalog.session() as s:
            row = s.scalars(select(ApiToken).where(ApiToken.token_hash == _digest(token))).first()
            if row is None or row.revoked_at is not None:
                return None
            user = s.get(User, row.user_id)
            if user is None or user.disabled:
                return None
            row.last_used_at = utcnow()
            return Principal(user.id, user.name, user.role)
