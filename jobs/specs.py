"""What a client asks for: the job and experiment request models and their limits. Any adapter
(the API, a search creating its next trial) builds jobs from these."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from engine.config import (
    STRICT,
    Block,
    Dataset,
    Hyperparameters,
    IntegralNumber,
    TestSamples,
    TrainConfig,
    TrainSamples,
)
from jobs.dispatch import DEFAULT_PRIORITY, PRIORITY_MAX, PRIORITY_MIN
from jobs.notifications.policy import MAX_URL_CHARS, URL_PATTERN, url_problem
from jobs.search.pruners import PRUNER_NAMES
from jobs.search.samplers import DEFAULT_TPE_STARTUP_TRIALS, SAMPLER_NAMES
from jobs.settings import get_settings
from models.catalog import BLOCK_NAMES, BlockName

Tag = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _distinct_tags(tags: list[str]) -> list[str]:
    # A job's tags are rows keyed by (tag, job): one given twice would be stored once and
    # shown twice.
    if len(set(tags)) != len(tags):
        raise ValueError("tags must be distinct")
    return tags


Tags = Annotated[
    list[Tag],
    AfterValidator(_distinct_tags),
    Field(max_length=20, json_schema_extra={"uniqueItems": True}),
]
JOB_NAME_MAX_CHARS = 200
# Free text is any Unicode text but NUL, which PostgreSQL cannot store (the body guard refuses it
# in any string; the schema says so for the fields that take free text).
NO_NUL = r"^[^\x00]*$"
PRIORITY_DESCRIPTION = (
    f"{PRIORITY_MIN} to {PRIORITY_MAX}, default {DEFAULT_PRIORITY}: a free worker takes the "
    "highest priority first; among equal priorities people take turns, and each person's "
    "experiments and lone jobs take turns within theirs."
)
Priority = Annotated[
    int,
    Field(ge=PRIORITY_MIN, le=PRIORITY_MAX, description=PRIORITY_DESCRIPTION),
    IntegralNumber,
]


def canonical_sha256(data: dict[str, Any]) -> str:
    """sha256 of JSON data written canonically (sorted keys, no spaces): a request's identity
    for idempotent submission."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# The final statuses (jobs.tables.TERMINAL_STATUSES; a test keeps the two the same).
NotifyEvent = Literal["succeeded", "failed", "cancelled", "pruned"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("succeeded", "failed", "cancelled", "pruned")


class NotifySpec(BaseModel):
    """Where to POST a signed summary when the job (or the experiment) ends, and on which of
    its final statuses."""

    model_config = ConfigDict(**STRICT)

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="An http or https URL; by default hosts with only public addresses are "
        "accepted (the server's NOTIFY_ALLOWED_HOSTS may list others).",
        json_schema_extra={"pattern": URL_PATTERN},
    )
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS),
        min_length=1,
        max_length=len(NOTIFY_EVENTS),
        description="The final statuses to be told of; default: all of them.",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("url")
    @classmethod
    def _allowed_url(cls, url: str) -> str:
        problem = url_problem(url, get_settings())
        if problem is not None:
            raise ValueError(problem)
        return url

    @field_validator("events")
    @classmethod
    def _distinct_events(cls, events: list[str]) -> list[str]:
        if len(set(events)) != len(events):
            raise ValueError("events must be distinct")
        return events

    @model_validator(mode="after")
    def _server_can_sign(self) -> NotifySpec:
        if get_settings().notify_secret is None:
            raise ValueError("notifications are off on this server (NOTIFY_SECRET is not set)")
        return self


NotifyField = Field(
    None,
    description="Be told, by a signed POST, when it ends (see the README's Operations).",
    # Left out of the stored spec and of the request's fingerprint when absent.
    exclude_if=lambda value: value is None,
)


class JobCreate(BaseModel):
    """A training job: which network, which data, which hyperparameters."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [
                {
                    "block": "residual",
                    "dataset": "cifar100",
                    "hyperparameters": {"epochs": 2, "batch_size": 64},
                    "train_samples": 300,
                    "test_samples": 100,
                    "name": "residual smoke run",
                    "tags": ["demo"],
                }
            ]
        },
    )

    block: Block
    dataset: Dataset = "cifar100"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    train_samples: TrainSamples = None
    test_samples: TestSamples = None
    name: str | None = Field(None, max_length=JOB_NAME_MAX_CHARS, pattern=NO_NUL)
    tags: Tags = Field(default_factory=list)
    priority: Priority = DEFAULT_PRIORITY
    notify: NotifySpec | None = NotifyField

    def fingerprint(self) -> str:
        """sha256 of the canonical spec, for idempotent submission."""
        return canonical_sha256(self.model_dump(mode="json"))

    def train_config(self) -> TrainConfig:
        """The engine's validated config for this job."""
        return TrainConfig(
            block=self.block,
            dataset=self.dataset,
            train_samples=self.train_samples,
            test_samples=self.test_samples,
            **self.hyperparameters.model_dump(),
        )


MAX_EXPERIMENT_JOBS = 1000
# Every hyperparameter but the seed can be varied over a grid (`seeds` varies the seed).
GRID_KEYS: tuple[str, ...] = tuple(name for name in Hyperparameters.model_fields if name != "seed")
REPORT_PRESET = "report"
REPORT_BLOCKS: tuple[BlockName, ...] = ("plain", "residual", "mobile")
REPORT_DATASET = "cifar100"
# The report's training settings are the spec's defaults (batch 128, SGD lr 0.01 momentum 0.9,
# no schedule, augmentation); a report experiment may change only how long it trains.
REPORT_HYPERPARAMETERS = Hyperparameters()
REPORT_FREE_HYPERPARAMETERS = ("epochs",)


def _values_schema(name: str) -> dict[str, Any]:
    """JSON Schema of a list of values of one hyperparameter, each as Hyperparameters declares
    it (the service validates them by building each job's Hyperparameters)."""
    value = dict(Hyperparameters.model_json_schema()["properties"][name])
    value.pop("default", None)
    value.pop("title", None)
    return {
        "type": "array",
        "items": value,
        "minItems": 1,
        "maxItems": MAX_EXPERIMENT_JOBS,
        "uniqueItems": True,
    }


def _experiment_schema_extra(schema: dict[str, Any]) -> None:
    """The example, and the rules of the preset in JSON Schema: with "report" only the fields
    the report leaves open may differ from its settings; without a preset, blocks are needed."""
    schema["examples"] = [
        {
            "name": "plain vs residual",
            "blocks": ["plain", "residual"],
            "hyperparameters": {"epochs": 2, "batch_size": 64},
            "grid": {"learning_rate": [0.01, 0.1]},
            "seeds": [0],
            "train_samples": 300,
            "test_samples": 100,
            "tags": ["demo"],
        }
    ]
    # The job count is a product of list lengths, which JSON Schema cannot bound: the limit is
    # stated here for tools, and a request over it is 422 too_many_jobs.
    schema["x-max-jobs"] = MAX_EXPERIMENT_JOBS
    fixed = {
        name: value
        for name, value in REPORT_HYPERPARAMETERS.model_dump(mode="json").items()
        if name not in REPORT_FREE_HYPERPARAMETERS
    }
    schema["if"] = {"properties": {"preset": {"const": REPORT_PRESET}}, "required": ["preset"]}
    schema["then"] = {
        "properties": {
            "blocks": {
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "array",
                        "items": {"enum": list(REPORT_BLOCKS)},
                        "minItems": len(REPORT_BLOCKS),
                    },
                ]
            },
            "dataset": {"const": REPORT_DATASET},
            "grid": {"maxProperties": 0},
            "search": {"type": "null"},
            "hyperparameters": {
                # {"const": None} would be dropped from the schema as unset.
                "properties": {
                    name: {"type": "null"} if value is None else {"const": value}
                    for name, value in fixed.items()
                }
            },
        }
    }
    schema["else"] = {"required": ["blocks"], "properties": {"blocks": {"type": "array"}}}
    # A search samples its space: no grid, no seeds, no preset.
    schema["allOf"] = [
        {
            "if": {"properties": {"search": {"type": "object"}}, "required": ["search"]},
            "then": {
                "properties": {
                    "grid": {"maxProperties": 0},
                    "seeds": {"type": "null"},
                    "preset": {"type": "null"},
                }
            },
        }
    ]


class ExperimentCreate(BaseModel):
    """Several jobs submitted and read as one: one per block x grid combination x seed, at most
    1,000 (`x-max-jobs`); more is 422 too_many_jobs."""

    model_config = ConfigDict(**STRICT, json_schema_extra=_experiment_schema_extra)

    name: str = Field(min_length=1, max_length=JOB_NAME_MAX_CHARS, pattern=NO_NUL)
    preset: Literal["report"] | None = Field(
        None,
        description='"report": the course report\'s comparison (plain, residual and mobile with '
        "its settings); only hyperparameters.epochs, train_samples, test_samples, seeds, name "
        "and tags may then be given.",
    )
    blocks: list[Block] | None = Field(
        None,
        min_length=1,
        max_length=len(BLOCK_NAMES),
        description="Distinct blocks, one job each (times the grid and seeds); needed unless a "
        "preset gives them.",
        json_schema_extra={"uniqueItems": True},
    )
    dataset: Dataset = "cifar100"
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Shared by every job of the experiment."
    )
    grid: Annotated[
        dict[str, Annotated[list[Any], Field(min_length=1, max_length=MAX_EXPERIMENT_JOBS)]],
        WithJsonSchema(
            {
                "type": "object",
                "properties": {name: _values_schema(name) for name in GRID_KEYS},
                "additionalProperties": False,
            }
        ),
    ] = Field(
        default_factory=dict,
        description="Hyperparameter name -> distinct values; one job per combination "
        "(cartesian product), each value replacing the shared one.",
    )
    seeds: Annotated[
        list[Any] | None,
        Field(min_length=1, max_length=MAX_EXPERIMENT_JOBS),
        WithJsonSchema({"anyOf": [_values_schema("seed"), {"type": "null"}]}),
    ] = Field(None, description="Distinct seeds, one job each (replacing hyperparameters.seed).")
    train_samples: TrainSamples = None
    test_samples: TestSamples = None
    tags: Tags = Field(default_factory=list)
    priority: Priority = Field(DEFAULT_PRIORITY, description="Every job's; " + PRIORITY_DESCRIPTION)
    notify: NotifySpec | None = NotifyField
    search: SearchCreate | None = Field(
        None,
        description="Search the hyperparameters instead of a grid: trials are jobs sampled from "
        "search.space (blocks: the blocks searched), each training hyperparameters.epochs at "
        "most.",
    )

    @field_validator("blocks")
    @classmethod
    def _distinct_blocks(cls, blocks: list[str] | None) -> list[str] | None:
        if blocks is not None and len(set(blocks)) != len(blocks):
            raise ValueError("blocks must be distinct")
        return blocks


MAX_SEARCH_TRIALS = 1000
# The choices come from the registries (jobs.search.pruners, jobs.search.samplers): a pruner or
# a sampler added there is accepted here.
if TYPE_CHECKING:
    PrunerName = str
    SamplerName = str
else:
    PrunerName = Literal[PRUNER_NAMES]
    SamplerName = Literal[SAMPLER_NAMES]
# The objective's metric, and the mode it is optimised in unless the request says.
OBJECTIVE_MODES: dict[str, Literal["max", "min"]] = {
    "test_accuracy": "max",
    "test_loss": "min",
    "train_loss": "min",
}
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# The hyperparameters a search cannot vary: epochs is each trial's full budget (the pruner
# stops trials early), and the seed is the experiment's, so trials differ only in their params.
NOT_SEARCHABLE = ("epochs", "seed")
SEARCH_KEYS: tuple[str, ...] = (
    "block",
    *(name for name in Hyperparameters.model_fields if name not in NOT_SEARCHABLE),
)


# Rules of a search that JSON Schema cannot state (they compare two values of the request); the
# schema lists them as `x-search-rules`, and breaking one is a 422 naming the field.
SEARCH_RULES = {
    "search.space.<name>.<uniform|loguniform|int>": "low is at most high",
    "search.space.block.choice[i]": "each value is among blocks",
    "search.max_trials": "with the grid sampler, at most the number of grid points",
    "search.pruner.min_epochs": "below hyperparameters.epochs unless the pruner is none",
    "search.startup_trials": "only with the tpe sampler",
}


def search_kinds(name: str) -> tuple[str, ...]:
    """The distributions a searched field takes: real numbers uniform, loguniform or choice,
    integers int or choice, the rest (the block, text, booleans) choice only."""
    if name == "block":
        return ("choice",)
    annotation = Hyperparameters.model_fields[name].annotation
    if annotation is float:
        return ("uniform", "loguniform", "choice")
    if annotation is int:
        return ("int", "choice")
    return ("choice",)


def _dimension_schema(name: str) -> dict[str, Any]:
    """A dimension of the space: one of the distributions the field takes, each bound and value
    as the field itself declares it (as a grid's values are)."""
    if name == "block":
        value: dict[str, Any] = {"enum": list(BLOCK_NAMES)}
    else:
        value = dict(Hyperparameters.model_json_schema()["properties"][name])
        value.pop("default", None)
        value.pop("title", None)
    bounds = {
        "uniform": value,
        "loguniform": {"allOf": [value, {"exclusiveMinimum": 0}]},
        "int": value,
    }
    branches = []
    for kind in search_kinds(name):
        if kind == "choice":
            items: dict[str, Any] = {
                "type": "array",
                "items": value,
                "minItems": 1,
                "maxItems": MAX_EXPERIMENT_JOBS,
                "uniqueItems": True,
            }
        else:
            items = {"type": "array", "items": bounds[kind], "minItems": 2, "maxItems": 2}
        branches.append(
            {
                "type": "object",
                "properties": {kind: items},
                "required": [kind],
                "additionalProperties": False,
            }
        )
    return branches[0] if len(branches) == 1 else {"oneOf": branches}


def _space_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "minProperties": 1,
        "properties": {name: _dimension_schema(name) for name in SEARCH_KEYS},
        "additionalProperties": False,
    }


def _search_schema_extra(schema: dict[str, Any]) -> None:
    """The grid sampler takes choice dimensions only and counts max_trials itself; the others
    need max_trials."""
    schema["x-search-rules"] = SEARCH_RULES
    schema["if"] = {"properties": {"sampler": {"const": "grid"}}, "required": ["sampler"]}
    schema["then"] = {
        "properties": {"space": {"patternProperties": {"": {"required": ["choice"]}}}}
    }
    schema["else"] = {"required": ["max_trials"], "properties": {"max_trials": {"type": "integer"}}}


class SearchObjective(BaseModel):
    """What the search optimises: a metric's value at a trial's last epoch."""

    model_config = ConfigDict(**STRICT)

    metric: Literal["test_accuracy", "test_loss", "train_loss"] = "test_accuracy"
    mode: Literal["max", "min"] | None = Field(
        None, description="Default: max for test_accuracy, min for the losses."
    )


class SearchPruner(BaseModel):
    """When a trial stops early. Every pruner is noise-aware: a trial is never stopped on a
    difference its evaluation cannot resolve (within NOISE_Z standard errors of the cutoff, or
    one test image, it goes on). hyperband: trials dealt into brackets whose first rungs are
    epochs / reduction_factor^s (the last trains every trial to the end); within a bracket a
    trial pauses at each rung until the bracket's trials all reached it, then the best
    1/reduction_factor resume from their checkpoints; asha: asynchronous successive halving,
    rungs at min_epochs x reduction_factor^k, decided as each trial arrives; median: stop a
    trial whose best value so far is worse than the median of ended trials at the same epoch;
    none: every trial trains all its epochs."""

    model_config = ConfigDict(**STRICT)

    type: PrunerName = "hyperband"
    min_epochs: Annotated[int, IntegralNumber] = Field(
        1, ge=1, le=1000, description="No trial is stopped or paused before this many epochs."
    )
    reduction_factor: Annotated[int, IntegralNumber] = Field(
        3,
        ge=2,
        le=10,
        description="hyperband and asha: 1 in reduction_factor trials goes on at each rung.",
    )
    startup_trials: Annotated[int, IntegralNumber] = Field(
        2, ge=0, le=100, description="median: trials that end before any is stopped."
    )


class SearchCreate(BaseModel):
    """An adaptive hyperparameter search: trials sampled from `space`, each an ordinary job of
    the experiment, stopped early by the pruner."""

    model_config = ConfigDict(**STRICT, json_schema_extra=_search_schema_extra)

    space: Annotated[dict[str, dict[str, Any]], WithJsonSchema(_space_schema())] = Field(
        description='Hyperparameter (or block) -> a distribution: {"uniform": [low, high]}, '
        '{"loguniform": [low, high]} (low > 0), {"int": [low, high]} or {"choice": [values]}.'
    )
    sampler: SamplerName = Field("tpe", description="grid takes choice dimensions only.")
    max_trials: Annotated[int | None, IntegralNumber] = Field(
        None,
        ge=1,
        le=MAX_SEARCH_TRIALS,
        description=f"Trials in all, at most {MAX_SEARCH_TRIALS}; needed unless the sampler is "
        f"grid (default: every grid point, or {MAX_SEARCH_TRIALS} of them in the seed's order).",
    )
    max_concurrent: Annotated[int, IntegralNumber] = Field(
        1, ge=1, le=MAX_EXPERIMENT_JOBS, description="Trials queued or running at once."
    )
    seed: Annotated[int, IntegralNumber] = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="Seeds the sampler: the same seed and max_concurrent 1 give the same trials.",
    )
    objective: SearchObjective = Field(default_factory=SearchObjective)
    pruner: SearchPruner = Field(default_factory=SearchPruner)
    startup_trials: Annotated[int | None, IntegralNumber] = Field(
        None,
        ge=0,
        le=MAX_SEARCH_TRIALS,
        description="tpe: the first trials sampled at random before TPE models the results "
        f"(Optuna's n_startup_trials); default {DEFAULT_TPE_STARTUP_TRIALS}. Only with the tpe "
        "sampler.",
    )


ExperimentSort = Literal[
    "job_id",
    "block",
    "status",
    "best_test_accuracy",
    "final_test_accuracy",
    "final_train_loss",
    "seconds_per_epoch",
    "params",
    "macs",
]
SortOrder = Literal["asc", "desc"]


class PriorityUpdate(BaseModel):
    """A queued job's new priority."""

    model_config = ConfigDict(extra="forbid", strict=True)

    priority: Priority


def _update_schema_extra(schema: dict[str, Any]) -> None:
    schema["minProperties"] = 1
    # What depends on the experiment, not on the request; breaking it is a 422 naming the field.
    schema["x-rules"] = {
        "max_trials": "a search's only; at least the trials it made, at most its grid's points "
        "with the grid sampler"
    }
    for field in schema["properties"].values():
        field.pop("default", None)  # left out means unchanged; null is not a value


class ExperimentUpdate(BaseModel):
    """A change to an experiment: its priority (its queued and waiting jobs', and the trials a
    search makes later), and a search's number of trials (raised to extend it, while it runs
    or after it ended)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_update_schema_extra)

    priority: Priority | SkipJsonSchema[None] = None
    max_trials: Annotated[int, IntegralNumber] | SkipJsonSchema[None] = Field(
        None,
        ge=1,
        le=MAX_SEARCH_TRIALS,
        description="A search's trials in all; at least the trials it has made (and at most "
        "the grid's points with the grid sampler).",
    )

    @field_validator("priority", "max_trials", mode="before")
    @classmethod
    def _given_as_numbers(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("give a number, or leave the field out")
        return value

    @model_validator(mode="after")
    def _something(self) -> ExperimentUpdate:
        if self.priority is None and self.max_trials is None:
            raise ValueError("give priority, max_trials or both")
        return self
