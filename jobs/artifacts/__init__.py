"""Artifact storage: where checkpoint bytes live, behind one interface (`ArtifactStore`) with a
backend per URL scheme, and the integrity checks every backend shares."""

from jobs.artifacts.store import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactObject,
    ArtifactRecord,
    ArtifactState,
    ArtifactStore,
    ArtifactStoreUnavailable,
    StoreOptions,
    artifact_store,
    artifact_url,
    configured_locator,
    open_store,
    set_request_deadline,
    store_at,
    store_locator,
)

__all__ = [
    "ArtifactDamaged",
    "ArtifactMissing",
    "ArtifactObject",
    "ArtifactRecord",
    "ArtifactState",
    "ArtifactStore",
    "ArtifactStoreUnavailable",
    "StoreOptions",
    "artifact_store",
    "artifact_url",
    "configured_locator",
    "open_store",
    "set_request_deadline",
    "store_at",
    "store_locator",
]
