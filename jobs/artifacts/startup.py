"""What every process checks of the artifact store when it starts."""

from __future__ import annotations

import logging

from jobs.artifacts.store import ArtifactStore, ArtifactStoreUnavailable, artifact_store
from jobs.settings import Settings

logger = logging.getLogger(__name__)


def check_artifact_store(settings: Settings) -> ArtifactStore:
    """The configured store, once it is known to work: a malformed ARTIFACT_URL or
    S3_ENDPOINT_URL, a bucket that does not exist or missing credentials raise ValueError
    naming the setting. A store that cannot be reached right now is only logged: the process
    starts, and requests and uploads retry."""
    store = artifact_store(settings)
    try:
        store.check()
    except ArtifactStoreUnavailable as error:
        logger.warning("the artifact store is not reachable yet: %s", error)
    return store
