"""Architectures (the seed's complexity table), liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from app.deps import SessionDep
from app.routes.common import error_responses
from app.schemas import ArchitectureRead, Health, Readiness
from jobs.queue import get_celery
from models.catalog import BLOCK_NAMES, block_complexity

router = APIRouter(tags=["system"])
health_router = APIRouter(tags=["system"])


@router.get(
    "/architectures",
    response_model=list[ArchitectureRead],
    responses=error_responses(401),
    summary="Each block's parameters and MACs (CIFAR-100, 3x32x32 input), without training",
)
def list_architectures() -> list[ArchitectureRead]:
    rows = []
    for block in BLOCK_NAMES:
        counts = block_complexity(block, 100)
        rows.append(
            ArchitectureRead(
                block=block,
                params=counts.params,
                macs=counts.macs,
                params_millions=round(counts.params / 1e6, 2),
                gmacs=round(counts.macs / 1e9, 2),
            )
        )
    return rows


@health_router.get("/health", response_model=Health, summary="The API process is alive")
def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={
        503: {"model": Readiness, "description": "Database or broker unreachable."},
        **error_responses(401),
    },
    summary="The database and the broker are reachable",
)
def ready(session: SessionDep, response: Response) -> Readiness:
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
    except Exception as error:  # noqa: BLE001 - readiness reports any failure
        database = f"unreachable: {type(error).__name__}"
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
        broker = "ok"
    except Exception as error:  # noqa: BLE001
        broker = f"unreachable: {type(error).__name__}"
    ok = database == "ok" and broker == "ok"
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ready" if ok else "not_ready", database=database, broker=broker)
