"""A search space: the request's dimensions checked against the hyperparameters they set, and
turned into Optuna distributions. Every problem is reported with the field it is in
(`search.space.learning_rate.loguniform[0]`), as a 422."""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from engine.config import Hyperparameters
from jobs.specs import (
    DISTRIBUTIONS,
    MAX_EXPERIMENT_JOBS,
    NOT_SEARCHABLE,
    SEARCH_KEYS,
    search_kinds,
)

Problems = list[tuple[str, str]]


def _check_value(
    base: dict[str, Any], name: str, value: Any, field: str, blocks: list[str]
) -> tuple[Any, Problems]:
    """The value as the job reads it (0 for weight_decay becomes 0.0), or why it is not one."""
    if name == "block":
        if value not in blocks:
            return None, [(field, f"{value!r} is not among blocks ({', '.join(blocks)})")]
        return value, []
    try:
        parsed = Hyperparameters.model_validate({**base, name: value})
    except ValidationError as error:
        return None, [(field, item["msg"]) for item in error.errors()]
    return getattr(parsed, name), []


def _bounds(
    base: dict[str, Any], name: str, kind: str, values: Any, field: str
) -> tuple[list[Any], Problems]:
    if not isinstance(values, list) or len(values) != 2:
        return [], [(field, f"{kind} takes [low, high]")]
    problems: Problems = []
    checked = []
    for index, value in enumerate(values):
        where = f"{field}[{index}]"
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append((where, "a number"))
            continue
        if kind == "int" and not float(value).is_integer():
            problems.append((where, "an integer"))
            continue
        if kind == "loguniform" and value <= 0:
            problems.append((where, "a loguniform bound must be above 0"))
            continue
        parsed, found = _check_value(base, name, int(value) if kind == "int" else value, where, [])
        problems += found
        checked.append(parsed)
    if not problems and checked[0] > checked[1]:
        problems.append((field, f"low {checked[0]} is above high {checked[1]}"))
    return checked, problems


def validate_space(
    space: dict[str, dict[str, Any]], base: dict[str, Any], blocks: list[str], *, field: str
) -> tuple[dict[str, dict[str, list[Any]]], Problems]:
    """The space with each value as the jobs read it, in SEARCH_KEYS order, or its problems."""
    problems: Problems = []
    checked: dict[str, dict[str, list[Any]]] = {}
    for name in space:
        if name not in SEARCH_KEYS:
            why = (
                f"{name} is not searched (epochs is each trial's budget; the seed is the "
                "experiment's)"
                if name in NOT_SEARCHABLE
                else f"not a hyperparameter; one of {', '.join(SEARCH_KEYS)}"
            )
            problems.append((f"{field}.{name}", why))
    for name in SEARCH_KEYS:
        if name not in space:
            continue
        where = f"{field}.{name}"
        dimension = space[name]
        if len(dimension) != 1 or next(iter(dimension)) not in DISTRIBUTIONS:
            problems.append((where, f"give one of {', '.join(DISTRIBUTIONS)}"))
            continue
        kind, values = next(iter(dimension.items()))
        where = f"{where}.{kind}"
        if kind not in search_kinds(name):
            problems.append((where, f"{name} takes {' or '.join(search_kinds(name))}"))
            continue
        if kind == "choice":
            if not isinstance(values, list) or not values:
                problems.append((where, "give at least one value"))
                continue
            if len(values) > MAX_EXPERIMENT_JOBS:
                problems.append((where, f"at most {MAX_EXPERIMENT_JOBS} values"))
                continue
            choices: list[Any] = []
            for index, value in enumerate(values):
                parsed, found = _check_value(base, name, value, f"{where}[{index}]", blocks)
                problems += found
                if not found and parsed in choices:
                    problems.append((f"{where}[{index}]", "a value given twice"))
                elif not found:
                    choices.append(parsed)
            checked[name] = {kind: choices}
        else:
            bounds, found = _bounds(base, name, kind, values, where)
            problems += found
            checked[name] = {kind: bounds}
    return checked, problems


def grid_size(space: dict[str, dict[str, list[Any]]]) -> int | None:
    """The number of grid points, or None when a dimension is not a choice."""
    if any("choice" not in dimension for dimension in space.values()):
        return None
    return math.prod(len(dimension["choice"]) for dimension in space.values())
