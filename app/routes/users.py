"""/users and their tokens, /me (who is asking) and /audit (who did what).

The rules are the core's (jobs.accounts): an admin manages users; a user makes, lists and
revokes their own tokens; a token is shown once, when made."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.deps import IdentityDep, SessionDep, read_session
from app.routes.common import error_responses, next_page
from app.routes.params import MAX_JOB_ID, TokenId, UserName
from app.schemas.users import (
    AuditEventRead,
    AuditList,
    MeRead,
    NewTokenRead,
    Revoked,
    TokenCreate,
    TokenList,
    TokenRead,
    UserCreate,
    UserCreated,
    UserList,
    UserRead,
    UserUpdate,
)
from jobs import accounts, listing
from jobs.accounts import NewToken

router = APIRouter(tags=["users"])


def _new_token(made: NewToken) -> NewTokenRead:
    return NewTokenRead.model_validate(
        {**TokenRead.model_validate(made.row).model_dump(), "token": made.token}
    )


@router.get("/me", response_model=MeRead, responses=error_responses(401), summary="Who is asking")
def me(identity: IdentityDep) -> MeRead:
    return MeRead(name=identity.name, role=identity.role, accounts=identity.accounts)


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserCreated,
    responses=error_responses(400, 401, 403, 409, 415, 422),
    summary="Create a user, with a first token (admins only)",
)
def create_user(
    new: UserCreate, response: Response, session: SessionDep, identity: IdentityDep
) -> UserCreated:
    """The answer holds the user's first token: shown this once. 409 user_exists for a name
    taken (`admin` is the API key's); 409 accounts_off without API_KEY."""
    user, made = accounts.create_user(
        session,
        identity,
        name=new.name,
        role=new.role,
        max_queued_jobs=new.max_queued_jobs,
        max_running_jobs=new.max_running_jobs,
    )
    response.headers["Location"] = f"/users/{user.name}"
    return UserCreated(user=UserRead.model_validate(user), token=_new_token(made))


@router.get(
    "/users",
    response_model=UserList,
    responses=error_responses(401, 403),
    summary="Every user (admins only)",
)
def list_users(identity: IdentityDep) -> UserList:
    accounts.ensure_admin(identity, "list users")
    with read_session() as session:
        return UserList(
            items=[UserRead.model_validate(user) for user in accounts.list_users(session)]
        )


@router.get(
    "/users/{name}",
    response_model=UserRead,
    responses=error_responses(401, 403, 404),
    summary="One user (admins, or the user themself)",
)
def get_user(name: UserName, identity: IdentityDep) -> UserRead:
    if identity.name != name:
        accounts.ensure_admin(identity, "read other users")
    with read_session() as session:
        return UserRead.model_validate(accounts.get_user(session, name))


@router.patch(
    "/users/{name}",
    response_model=UserRead,
    responses=error_responses(400, 401, 403, 404, 415, 422),
    summary="Change a user's role, disabled flag or limits (admins only)",
)
def update_user(
    name: UserName, change: UserUpdate, session: SessionDep, identity: IdentityDep
) -> UserRead:
    """Only the fields sent change. `disabled: true` stops every token of the user at once
    (their sign-in cookies too)."""
    user = accounts.update_user(session, identity, name, change.model_dump(exclude_unset=True))
    return UserRead.model_validate(user)


@router.post(
    "/users/{name}/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=NewTokenRead,
    responses=error_responses(400, 401, 403, 404, 409, 415, 422),
    summary="Make another token for the user (the user themself or an admin)",
)
def create_token(
    name: UserName, session: SessionDep, identity: IdentityDep, new: TokenCreate | None = None
) -> NewTokenRead:
    """The token is in the answer, this once."""
    made = accounts.create_token(session, identity, name, new.label if new else None)
    return _new_token(made)


@router.get(
    "/users/{name}/tokens",
    response_model=TokenList,
    responses=error_responses(401, 403, 404),
    summary="The user's tokens: ids, labels and dates, never the tokens",
)
def list_tokens(name: UserName, identity: IdentityDep) -> TokenList:
    with read_session() as session:
        tokens = accounts.list_tokens(session, identity, name)
        return TokenList(items=[TokenRead.model_validate(token) for token in tokens])


@router.delete(
    "/users/{name}/tokens/{token_id}",
    response_model=Revoked,
    responses=error_responses(401, 403, 404),
    summary="Revoke one of the user's tokens (it fails from the next request on)",
)
def revoke_token(
    name: UserName, token_id: TokenId, session: SessionDep, identity: IdentityDep
) -> Revoked:
    return Revoked(revoked=accounts.revoke_tokens(session, identity, name, token_id))


@router.delete(
    "/users/{name}/tokens",
    response_model=Revoked,
    responses=error_responses(401, 403, 404),
    summary="Revoke every token of the user",
)
def revoke_tokens(name: UserName, session: SessionDep, identity: IdentityDep) -> Revoked:
    return Revoked(revoked=accounts.revoke_tokens(session, identity, name))


IdQuery = Annotated[int | None, Query(ge=1, le=MAX_JOB_ID)]


@router.get(
    "/audit",
    response_model=AuditList,
    responses=error_responses(401, 403, 422),
    summary="Who did what, newest first (admins only)",
)
def list_audit(
    request: Request,
    response: Response,
    identity: IdentityDep,
    job_id: IdQuery = None,
    experiment_id: IdQuery = None,
    actor: Annotated[str | None, Query(max_length=64, description="Only this user's.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="The `cursor` of the page before's `next`. Opaque."),
    ] = None,
) -> AuditList:
    """Submissions, cancels, priority changes and deletions of jobs and experiments (deleted
    ones included), and changes to users and tokens."""
    accounts.ensure_admin(identity, "read the audit trail")
    with read_session() as session:
        events, next_cursor = listing.list_audit_events(
            session,
            job_id=job_id,
            experiment_id=experiment_id,
            actor=actor,
            limit=limit,
            cursor=cursor,
        )
        return AuditList(
            items=[AuditEventRead.model_validate(event) for event in events],
            limit=limit,
            next=next_page(request, response, next_cursor),
        )
