"""Request bodies for POST /jobs and POST /experiments, from flags, from a JSON or YAML file, or
both (the flags given override the file). Only what the user gives is sent: the API fills in
its own defaults and validates every value, so its 422 names any field that is wrong."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cli.errors import UsageError


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter of the job spec (`hyperparameters.<name>`) and its flag."""

    name: str
    flags: tuple[str, ...]
    kind: type
    help: str


# The API's names; bounds and allowed values are the API's to check (its 422 names the field).
HYPERPARAMETERS = (
    Hyperparameter("epochs", ("--epochs",), int, "passes over the training set (API default 100)"),
    Hyperparameter("batch_size", ("--batch-size",), int, "images per batch (default 128)"),
    Hyperparameter(
        "learning_rate", ("--lr", "--learning-rate"), float, "initial learning rate (default 0.01)"
    ),
    Hyperparameter("optimizer", ("--optimizer",), str, "sgd, adam or adamw (default sgd)"),
    Hyperparameter("momentum", ("--momentum",), float, "SGD momentum (default 0.9)"),
    Hyperparameter("weight_decay", ("--weight-decay",), float, "L2 penalty (default 0)"),
    Hyperparameter("scheduler", ("--scheduler",), str, "none, cosine or step (default none)"),
    Hyperparameter("step_size", ("--step-size",), int, "epochs per step (step scheduler)"),
    Hyperparameter("gamma", ("--gamma",), float, "LR factor per step (step scheduler)"),
    Hyperparameter("augment", ("--augment",), bool, "random crop + flip: true or false"),
    Hyperparameter("seed", ("--seed",), int, "seeds weights, shuffling and subsets (default 0)"),
    Hyperparameter("precision", ("--precision",), str, "fp32 or bf16 (default fp32)"),
)
HYPERPARAMETER_KINDS = {hp.name: hp.kind for hp in HYPERPARAMETERS}
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_value(text: str, kind: type | None) -> Any:
    """A flag's text as the JSON value the API expects. Without a known kind: an integer, a
    number, true/false, or else the text itself."""
    if kind is bool:
        return parse_bool(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def add_hyperparameter_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hyperparameters (omitted ones take the API's defaults)")
    for hp in HYPERPARAMETERS:
        group.add_argument(
            *hp.flags,
            dest=f"hp_{hp.name}",
            type=parse_bool if hp.kind is bool else hp.kind,
            metavar=hp.name.upper(),
            help=hp.help,
        )


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="cifar100 (default) or cifar10")
    parser.add_argument(
        "--train-samples", type=int, metavar="N", help="train on a seeded random subset of N"
    )
    parser.add_argument(
        "--test-samples", type=int, metavar="N", help="test on a seeded random subset of N"
    )
    parser.add_argument(
        "--tag", action="append", dest="tags", metavar="TAG", help="a tag (repeatable)"
    )


# PyYAML follows YAML 1.1, which reads 1e-3 (no dot) as a string; YAML 1.2 and JSON read it as
# a number, as anyone writing a learning rate means.
class _SpecLoader(yaml.SafeLoader):
    pass


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def load_spec_file(path: str) -> dict[str, Any]:
    """A JSON (.json) or YAML file, or stdin for "-", holding one mapping."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise UsageError(f"cannot read the spec file {path}: {reason}") from None
    try:
        # _SpecLoader is a SafeLoader: no Python objects are built from the file.
        spec = json.loads(text) if path.endswith(".json") else yaml.load(text, Loader=_SpecLoader)
    except json.JSONDecodeError as error:
        raise UsageError(
            f"{path}: not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "cannot be parsed"
        raise UsageError(f"{path}: not valid YAML: {problem}{where}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"{path}: the spec must be a mapping of fields, like the API's JSON body")
    return spec


def _hyperparameters_from(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    given = base.get("hyperparameters", {})
    if not isinstance(given, dict):
        raise UsageError("hyperparameters in the spec file must be a mapping")
    hyperparameters = dict(given)
    for hp in HYPERPARAMETERS:
        value = getattr(args, f"hp_{hp.name}")
        if value is not None:
            hyperparameters[hp.name] = value
    return hyperparameters


def _apply_common(body: dict[str, Any], args: argparse.Namespace) -> None:
    hyperparameters = _hyperparameters_from(args, body)
    if hyperparameters:
        body["hyperparameters"] = hyperparameters
    for field in ("dataset", "train_samples", "test_samples", "name", "tags", "priority"):
        value = getattr(args, field)
        if value is not None:
            body[field] = value


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /jobs body: the --file spec, if any, with the flags given laid over it."""
    body = load_spec_file(args.file) if args.file else {}
    if args.block is not None:
        body["block"] = args.block
    _apply_common(body, args)
    if "block" not in body:
        raise UsageError("--block is required (plain, residual or mobile), or a spec with --file")
    return body


def parse_grid(entries: list[str]) -> dict[str, list[Any]]:
    """--grid learning_rate=0.01,0.1 --grid batch_size=64,128 as {name: [values]}; values take
    the hyperparameter's type."""
    grid: dict[str, list[Any]] = {}
    for entry in entries:
        name, equals, values = entry.partition("=")
        name = name.strip()
        if not equals or not name or not values.strip():
            raise UsageError(
                f"--grid takes NAME=V1,V2,... (e.g. learning_rate=0.01,0.1), not {entry!r}"
            )
        if name in grid:
            raise UsageError(f"--grid {name} is given twice")
        kind = HYPERPARAMETER_KINDS.get(name)
        try:
            grid[name] = [parse_value(value.strip(), kind) for value in values.split(",")]
        except ValueError as error:
            raise UsageError(f"--grid {name}: {error}") from None
    return grid


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise UsageError(
            f"--seeds takes comma-separated integers (e.g. 0,1,2), not {text!r}"
        ) from None


def experiment_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /experiments body: the --file spec, if any, with the flags given laid over it."""
    body = load_spec_file(args.file) if args.file else {}
    if args.preset is not None:
        body["preset"] = args.preset
    if args.blocks:
        body["blocks"] = args.blocks
    if args.grid:
        body["grid"] = parse_grid(args.grid)
    if args.seeds is not None:
        body["seeds"] = parse_seeds(args.seeds)
    _apply_common(body, args)
    if not body.get("name"):
        raise UsageError("--name is required (or a spec with --file that has one)")
    if "blocks" not in body and body.get("preset") is None:
        raise UsageError("give the blocks to compare with --block (repeatable) or --preset report")
    return body


# --param NAME=KIND:ARGS for a search's space: uniform:LOW:HIGH, loguniform:LOW:HIGH,
# int:LOW:HIGH or choice:V1,V2,...
SPACE_KINDS = ("uniform", "loguniform", "int", "choice")


def parse_space(entries: list[str]) -> dict[str, dict[str, list[Any]]]:
    """--param learning_rate=loguniform:0.001:0.3 --param batch_size=choice:16,64 as a search's
    space; values take the hyperparameter's type (a block's name for `block`)."""
    space: dict[str, dict[str, list[Any]]] = {}
    usage = "--param takes NAME=KIND:ARGS (uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH or "
    for entry in entries:
        name, equals, rest = entry.partition("=")
        name = name.strip()
        kind, colon, arguments = rest.partition(":")
        kind = kind.strip()
        if not equals or not name or not colon or kind not in SPACE_KINDS or not arguments:
            raise UsageError(f"{usage}choice:V1,V2,...), not {entry!r}")
        if name in space:
            raise UsageError(f"--param {name} is given twice")
        value_kind = None if name == "block" else HYPERPARAMETER_KINDS.get(name)
        try:
            if kind == "choice":
                values = [parse_value(value.strip(), value_kind) for value in arguments.split(",")]
            else:
                bounds = arguments.split(":")
                if len(bounds) != 2:
                    raise ValueError(f"{kind} takes LOW:HIGH, not {arguments!r}")
                number = int if kind == "int" else float
                values = [number(bound) for bound in bounds]
        except ValueError as error:
            raise UsageError(f"--param {name}: {error}") from None
        space[name] = {kind: values}
    return space


def search_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /experiments body of a search: the --file spec, if any, with the flags laid
    over it (its `search` section merged field by field)."""
    body = experiment_body(args)
    search = dict(body.get("search") or {})
    if args.params:
        search["space"] = parse_space(args.params)
    pruner = dict(search.get("pruner") or {})
    for flag, field in (
        ("pruner", "type"),
        ("min_epochs", "min_epochs"),
        ("reduction_factor", "reduction_factor"),
        ("median_startup_trials", "startup_trials"),
    ):
        value = getattr(args, flag)
        if value is not None:
            pruner[field] = value
    if pruner:
        search["pruner"] = pruner
    for flag in ("sampler", "max_trials", "max_concurrent", "seed", "startup_trials"):
        value = getattr(args, f"search_{flag}")
        if value is not None:
            search[flag] = value
    if args.objective is not None:
        metric, _, mode = args.objective.partition(":")
        search["objective"] = {"metric": metric, **({"mode": mode} if mode else {})}
    if "space" not in search:
        raise UsageError("give the space searched with --param (repeatable), or a spec with --file")
    body["search"] = search
    return body
