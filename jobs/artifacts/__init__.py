"""Artifact storage: where checkpoint bytes live, behind one interface (`ArtifactStore`) with a
backend per URL scheme, and the integrity checks every backend shares."""

from jobs.artifacts.store import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactObject,
    ArtifactRecord,
    ArtifactState,
    ArtifactStore,
    artifact_store,
    open_store,
)

__all__ = [
    "ArtifactDamaged",
    "ArtifactMissing",
    "ArtifactObject",
    "ArtifactRecord",
    "ArtifactState",
    "ArtifactStore",
    "artifact_store",
    "open_store",
]
