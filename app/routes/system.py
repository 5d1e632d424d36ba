"""Architectures (the seed's complexity table), liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Response, status

from app.routes.common import error_responses
from app.schemas.system import ArchitectureRead, Health, Readiness
from app.unavailable import RETRY_AFTER_SECONDS
from jobs.db import ping_database
from jobs.queue import ping_broker
from models.catalog import BLOCK_NAMES, block_complexity

READY_CHECK_SECONDS = 2.5
# The checks run here, not in the request thread pool: a backend that hangs holds at most these
# threads (each check ends by itself within the backend's own timeouts), and a check that finds
# them all busy simply runs out of time and reports the backend unavailable.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ready-check")

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
async def ready(response: Response) -> Readiness:
    """Checks the database and the broker at once, each within READY_CHECK_SECONDS; a backend
    that fails or does not answer in time is reported as `unavailable: <why>`."""
    database, broker = await asyncio.gather(
        _check(ping_database),
        _check(lambda: ping_broker(timeout_seconds=READY_CHECK_SECONDS)),
    )
    ok = database == "ok" and broker == "ok"
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return Readiness(status="ready" if ok else "not_ready", database=database, broker=broker)


async def _check(ping: Callable[[], None]) -> str:
    running = asyncio.get_running_loop().run_in_executor(_checks, ping)
    try:
        await asyncio.wait_for(running, READY_CHECK_SECONDS)
    except TimeoutError:
        return f"unavailable: no answer within {READY_CHECK_SECONDS:g} s"
    except Exception as error:  # noqa: BLE001 - readiness reports any failure
        return f"unavailable: {type(error).__name__}"
    return "ok"
