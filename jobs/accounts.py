"""Accounts: who a caller is, what they may change, and the users and tokens behind that.

With no API_KEY setting there are no accounts: every caller is the same anonymous admin and
owns nothing (owner null). With API_KEY set, a caller is either the built-in admin (named
`admin`, the holder of API_KEY) or a user, found by one of their tokens. A token is
`cj_` + 43 url-safe characters (32 random bytes); only its SHA-256 is kept, so the database
never holds a usable token, and a lookup by that hash (a unique index) per request means that a
revoked token, or a disabled user's, fails on the very next request in every API process.

The permission rule is one function, `ensure_may_change`: everyone signed in may read
everything; a job or an experiment is changed (cancelled, re-prioritised, extended, resumed,
deleted) only by its owner or an admin."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs import audit
from jobs.errors import (
    AccountsOff,
    Forbidden,
    InvalidFields,
    QuotaExceeded,
    TokenNotFound,
    TokenRejected,
    UserExists,
    UserNotFound,
)
from jobs.settings import Settings
from jobs.tables import ROLE_ADMIN, ROLES, Job, JobStatus, User, UserToken, utcnow

BUILTIN_ADMIN_NAME = "admin"
TOKEN_PREFIX = "cj_"
TOKEN_PATTERN = re.compile(r"cj_[A-Za-z0-9_-]{43}")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# last_used_at is written at most this often per token.
LAST_USED_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class Identity:
    """Who is asking: `name` (None without accounts), `role`, and whether accounts are on."""

    name: str | None
    role: str
    accounts: bool
    user_id: int | None = None
    token_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def owner(self) -> str | None:
        """The owner recorded on what this caller submits."""
        return self.name


# Without API_KEY: everyone may do everything, and owns nothing.
NO_ACCOUNTS = Identity(name=None, role=ROLE_ADMIN, accounts=False)
# The holder of API_KEY.
BUILTIN_ADMIN = Identity(name=BUILTIN_ADMIN_NAME, role=ROLE_ADMIN, accounts=True)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX)


# --- the permission rule ---------------------------------------------------------------------


def ensure_may_change(actor: Identity, owner: str | None, what: str) -> None:
    """Forbidden unless `actor` may change `what` (a job or an experiment) owned by `owner`:
    its owner, an admin, or anyone when there are no accounts."""
    if actor.is_admin or (actor.name is not None and actor.name == owner):
        return
    raise Forbidden(
        f"{what} belongs to {owner or 'no one'}; only its owner or an admin may change it "
        f"(you are {actor.name}, a {actor.role})."
    )


def ensure_admin(actor: Identity, action: str) -> None:
    if not actor.is_admin:
        raise Forbidden(f"Only an admin may {action} (you are {actor.name}, a {actor.role}).")


# --- identifying a caller --------------------------------------------------------------------


# What identifying a caller reads: the token's row and its user's, as plain columns (one
# indexed lookup, no ORM objects).
_CALLER = select(
    UserToken.id,
    UserToken.token_sha256,
    UserToken.revoked_at,
    UserToken.last_used_at,
    User.id.label("user_id"),
    User.name,
    User.role,
    User.disabled,
).join(User, User.id == UserToken.user_id)


def _usable(row: Any) -> Identity:
    if row is None:
        raise TokenRejected("token_unknown", "The token is not one this service issued.")
    if row.revoked_at is not None:
        raise TokenRejected("token_revoked", "The token has been revoked.")
    if row.disabled:
        raise TokenRejected("user_disabled", f"User {row.name} is disabled.")
    return Identity(
        name=row.name, role=row.role, accounts=True, user_id=row.user_id, token_id=row.id
    )


def identify_token(session: Session, token: str) -> tuple[Identity, datetime | None]:
    """The user a token belongs to, and when it was last used; TokenRejected (malformed,
    unknown, revoked, or its user disabled)."""
    if not TOKEN_PATTERN.fullmatch(token):
        raise TokenRejected(
            "token_malformed", "The token is malformed (a token is cj_ and 43 characters)."
        )
    digest = token_sha256(token)
    row = session.execute(_CALLER.where(UserToken.token_sha256 == digest)).one_or_none()
    # The lookup found the row by its hash; compare it once more in constant time.
    if row is not None and not hmac.compare_digest(row.token_sha256, digest):
        row = None
    return _usable(row), None if row is None else row.last_used_at


def use_to_note(last_used_at: datetime | None) -> bool:
    """Whether a token's use now is worth writing down: its last use is unknown or more than
    a minute old (a write per request would cost more than the lookup, and on SQLite wait for
    the one writer)."""
    return last_used_at is None or utcnow() - last_used_at >= LAST_USED_PRECISION


def note_use(session: Session, token_id: int) -> None:
    """Record that a token was used now."""
    session.execute(
        update(UserToken)
        .where(UserToken.id == token_id)
        .values(last_used_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def sign_in_value(api_key: str, token_id: int, token_hash: str) -> str:
    """The dashboard's sign-in cookie for a user's token: the token's id and an HMAC of its
    stored hash under API_KEY. It holds no token, is checked against the stored hash, and dies
    with the token's revocation, its user's disabling, or a new API_KEY."""
    mac = hmac.new(api_key.encode(), token_hash.encode(), hashlib.sha256).hexdigest()
    return f"{token_id}.{mac}"


def identify_sign_in(session: Session, api_key: str, value: str) -> Identity:
    """The user of a sign-in cookie made by `sign_in_value`; TokenRejected otherwise."""
    token_id, _, mac = value.partition(".")
    if not token_id.isdigit() or len(token_id) > 10 or len(mac) != 64:
        raise TokenRejected("token_malformed", "The sign-in cookie is malformed.")
    row = session.execute(_CALLER.where(UserToken.id == int(token_id))).one_or_none()
    if row is not None and not hmac.compare_digest(
        sign_in_value(api_key, row.id, row.token_sha256), value
    ):
        row = None
    return _usable(row)


# --- users and tokens ------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidFields(
            [
                (
                    "name",
                    "1 to 64 characters: lower-case letters, digits, '.', '_' and '-', "
                    "starting with a letter or digit",
                )
            ]  # fmt: skip
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidFields([("role", f"one of {', '.join(ROLES)}, not {role!r}")])


def get_user(session: Session, name: str) -> User:
    user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
    if user is None:
        raise UserNotFound(name)
    return user


def list_users(session: Session) -> list[User]:
    """Every user, by name (a lab's people: a page holds them all)."""
    return list(session.execute(select(User).order_by(User.name)).scalars())


@dataclass(frozen=True)
class NewToken:
    """A token just made: its row, and the token itself (shown this once, never kept)."""

    row: UserToken
    token: str


def _add_token(session: Session, user: User, label: str | None, actor: Identity) -> NewToken:
    if not actor.accounts:
        raise AccountsOff(
            "This service has no API_KEY, so it accepts no token: set API_KEY to use accounts."
        )
    token = new_token()
    row = UserToken(
        user_id=user.id, token_sha256=token_sha256(token), label=label, created_at=utcnow()
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor.name,
        "token_created",
        detail={"user": user.name, "token_id": row.id, "label": label},
    )
    return NewToken(row, token)


def create_user(
    session: Session,
    actor: Identity,
    *,
    name: str,
    role: str,
    max_queued_jobs: int | None = None,
    max_running_jobs: int | None = None,
) -> tuple[User, NewToken]:
    """A new user (admins only) with a first token. UserExists for a name taken, `admin` (the
    holder of API_KEY) included."""
    ensure_admin(actor, "create users")
    _check_name(name)
    _check_role(role)
    if name == BUILTIN_ADMIN_NAME:
        raise UserExists(f"The name {name!r} is the API key's holder's; choose another.")
    user = User(
        name=name,
        role=role,
        disabled=False,
        max_queued_jobs=max_queued_jobs,
        max_running_jobs=max_running_jobs,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:
        raise UserExists(f"A user named {name!r} already exists.") from None
    audit.record(
        session,
        actor.name,
        "user_created",
        detail={
            "user": name,
            "role": role,
            "max_queued_jobs": max_queued_jobs,
            "max_running_jobs": max_running_jobs,
        },
    )
    return user, _add_token(session, user, "first", actor)


USER_FIELDS = ("role", "disabled", "max_queued_jobs", "max_running_jobs")


def update_user(session: Session, actor: Identity, name: str, changes: dict[str, Any]) -> User:
    """Change a user's role, disabled flag or limits (admins only); only the fields given.
    Disabling stops every token of theirs at once."""
    ensure_admin(actor, "change users")
    user = get_user(session, name)
    if "role" in changes:
        _check_role(changes["role"])
    changed = {
        field: value
        for field, value in changes.items()
        if field in USER_FIELDS and getattr(user, field) != value
    }
    for field, value in changed.items():
        setattr(user, field, value)
    if "disabled" in changed:
        user.disabled_at = utcnow() if user.disabled else None
        action = "user_disabled" if user.disabled else "user_enabled"
        audit.record(session, actor.name, action, detail={"user": name})
    rest = {field: value for field, value in changed.items() if field != "disabled"}
    if rest:
        audit.record(session, actor.name, "user_changed", detail={"user": name, **rest})
    session.flush()
    return user


def _ensure_self_or_admin(actor: Identity, name: str, action: str) -> None:
    if not actor.is_admin and actor.name != name:
        raise Forbidden(
            f"Only {name} or an admin may {action} {name}'s tokens (you are {actor.name})."
        )


def create_token(session: Session, actor: Identity, name: str, label: str | None) -> NewToken:
    """Another token for the user (the user themself or an admin)."""
    _ensure_self_or_admin(actor, name, "make")
    return _add_token(session, get_user(session, name), label, actor)


def list_tokens(session: Session, actor: Identity, name: str) -> list[UserToken]:
    _ensure_self_or_admin(actor, name, "list")
    user = get_user(session, name)
    return list(
        session.execute(
            select(UserToken).where(UserToken.user_id == user.id).order_by(UserToken.id)
        ).scalars()
    )


def revoke_tokens(
    session: Session, actor: Identity, name: str, token_id: int | None = None
) -> list[int]:
    """Revoke one of the user's tokens (TokenNotFound if it is not theirs), or all of them;
    the ids revoked now (revoking again is harmless)."""
    _ensure_self_or_admin(actor, name, "revoke")
    user = get_user(session, name)
    query = select(UserToken).where(UserToken.user_id == user.id)
    if token_id is not None:
        query = query.where(UserToken.id == token_id)
    tokens = list(session.execute(query.with_for_update()).scalars())
    if token_id is not None and not tokens:
        raise TokenNotFound(f"User {name} has no token {token_id}.")
    now = utcnow()
    revoked = []
    for token in tokens:
        if token.revoked_at is None:
            token.revoked_at = now
            revoked.append(token.id)
            audit.record(
                session, actor.name, "token_revoked", detail={"user": name, "token_id": token.id}
            )
    session.flush()
    return revoked


# --- the queued-jobs quota -------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedQuota:
    """A user's limit on queued jobs, with their row locked until the transaction ends, and
    their queued count when it was taken."""

    owner: str
    limit: int
    queued_before: int


def _queued(session: Session, owner: str) -> int:
    # A count over the (owner, status, id) index.
    return session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.owner == owner, Job.status == JobStatus.QUEUED)
    ).scalar_one()


def take_queued_quota(
    session: Session, owner: str | None, settings: Settings
) -> QueuedQuota | None:
    """Lock the owner's user row (SELECT ... FOR UPDATE: concurrent submissions of one user
    take turns; SQLite's one writer does the same) and read their limit on queued jobs
    (`users.max_queued_jobs`, else MAX_QUEUED_JOBS_PER_USER). None when no limit applies:
    without accounts, for the built-in admin (no user row), or with neither set."""
    if owner is None:
        return None
    user = session.execute(
        select(User).where(User.name == owner).with_for_update()
    ).scalar_one_or_none()
    if user is None:
        return None
    limit = user.max_queued_jobs
    if limit is None:
        limit = settings.max_queued_jobs_per_user
    if limit is None:
        return None
    return QueuedQuota(owner, limit, _queued(session, owner))


def check_queued_quota(session: Session, quota: QueuedQuota | None) -> None:
    """After the submission's jobs were added (flushed): QuotaExceeded if they leave the owner
    over their limit; the caller's transaction then rolls back and nothing is made."""
    if quota is None:
        return
    session.flush()
    queued = _queued(session, quota.owner)
    if queued > quota.limit:
        adding = queued - quota.queued_before
        raise QuotaExceeded(
            f"User {quota.owner} has {quota.queued_before} queued jobs and this request adds "
            f"{adding}: over their limit of {quota.limit} queued jobs; wait for some to start "
            "or cancel some.",
            limit=quota.limit,
            queued=quota.queued_before,
            adding=adding,
        )
