"""The deployment files, checked without Docker: both compose files are valid Compose (the
Compose Specification's JSON schema) and hold one worker service per GPU, the S3 overlay gives
every worker its settings, the Dockerfile copies only what the build context lets in, and the
build context leaves out the virtual environment, the data, the checkpoints and .git."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_S3 = ROOT / "docker-compose.s3.yml"
SCHEMA = Path(__file__).resolve().parent / "compose-spec" / "compose-spec.json"
# Docker Compose's merge tags (2.24.4 and later): the value itself, in place of the base file's.
COMPOSE_TAGS = ("!override", "!reset")
GPU_PROFILES = {"gpus-2": 2, "gpus-4": 4, "gpus-8": 8}


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: anchors, merge keys, and its merge tags."""


def _tagged(loader: ComposeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in COMPOSE_TAGS:
    ComposeLoader.add_constructor(_tag, _tagged)


def load(path: Path) -> dict[str, Any]:
    document = yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 (a SafeLoader)
    assert isinstance(document, dict)
    return document


def gpus(service: dict[str, Any]) -> list[str]:
    """The GPU ids a service reserves."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [
        str(device_id)
        for device in devices.get("devices", [])
        for device_id in device.get("device_ids", [])
    ]


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command") == ["python", "-m", "worker"]
    }


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_S3], ids=lambda path: path.name)
def test_the_compose_files_follow_the_compose_specification(path: Path) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    problems = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(load(path))
    ]
    assert problems == []


def test_each_gpu_has_a_worker_service_of_its_own() -> None:
    """Replicas of one service share its device pin (`--scale` would put them all on one GPU),
    so each GPU has its own service; profile gpus-N starts the workers of GPUs 0 to N-1."""
    compose = load(COMPOSE)
    pinned = {name: gpus(service) for name, service in workers(compose).items()}
    assert pinned["worker"] == ["0"] and "profiles" not in compose["services"]["worker"]
    assert all(len(ids) == 1 for ids in pinned.values()), pinned
    assert sorted(ids[0] for ids in pinned.values()) == [str(gpu) for gpu in range(8)]
    for profile, count in GPU_PROFILES.items():
        started = {
            pinned[name][0]
            for name, service in workers(compose).items()
            if "profiles" not in service or profile in service["profiles"]
        }
        assert started == {str(gpu) for gpu in range(count)}, profile
    for service in workers(compose).values():
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert {"data:/data", "artifacts:/artifacts"} <= set(service["volumes"])
    assert set(compose["services"]) - set(pinned) == {"postgres", "redis", "migrate", "api"}


def test_the_s3_overlay_gives_every_worker_the_bucket_and_no_shared_volume() -> None:
    base = load(COMPOSE)
    overlay = load(COMPOSE_S3)["services"]
    for name in [*workers(base), "api", "migrate"]:
        service = overlay.get(name)
        assert service is not None, f"{name} would keep the shared checkpoint volume"
        assert service["environment"]["ARTIFACT_URL"].startswith("s3://"), name
        assert service["volumes"] == ["data:/data"], name
    assert all(
        overlay[name]["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
        for name in [*workers(base), "api"]
    )
    # `!override` needs Compose 2.24.4; the file says so where it uses it.
    assert "!override" in COMPOSE_S3.read_text() and "2.24.4" in COMPOSE_S3.read_text()


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether `docker build` leaves `path` out of the context: as Docker reads .dockerignore,
    each pattern (`*`, `?`, `**` for any number of folders) matching the path or a folder
    above it, a `!` pattern letting it back in, the last pattern that matches deciding."""
    parts = path.split("/")
    candidates = ["/".join(parts[: length + 1]) for length in range(len(parts))]
    excluded = False
    for pattern in patterns:
        exception = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not exception
    return excluded


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def copied_sources() -> list[str]:
    """Every source path of the Dockerfile's COPY instructions."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def test_the_build_context_holds_what_the_image_copies_and_nothing_heavy() -> None:
    patterns = dockerignore()
    for path in (
        ".venv/lib/python3.11/site-packages/torch/lib/libtorch_cuda.so",
        "data/cifar-100-python/train",
        "var/jobs.sqlite3",
        "var/artifacts/jobs/1/attempt-1/epoch-0001.pt",
        "artifacts/jobs/1/attempt-1/epoch-0001.pt",
        ".git/objects/pack/pack-1.pack",
        ".env",
        "wheelhouse/torch-2.14.1-cp312-cp312-manylinux_2_28_x86_64.whl",
        "tests/test_api.py",
        "app/__pycache__/main.cpython-311.pyc",
    ):
        assert dockerignore_excludes(patterns, path), path
    sources = copied_sources()
    assert set(sources) >= {"requirements.txt", "constraints.txt", "app", "jobs", "worker"}
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(file.relative_to(ROOT))
            for file in (ROOT / source).rglob("*")
            if file.is_file() and "__pycache__" not in file.parts
        ]  # fmt: skip
        assert files, f"the Dockerfile copies {source}, which is missing"
        for file in files:
            assert not dockerignore_excludes(patterns, file), f"{file} is left out of the build"


def test_the_image_runs_as_a_user_by_number_from_a_pinned_base() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    base = next(line.split()[1] for line in lines if line.startswith("FROM "))
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim", base), base
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), user
