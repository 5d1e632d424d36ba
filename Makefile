# Every target creates the virtual environment first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run worker api migrate test test-fast lint format bench data wheels gpu-check clean

# The last step installs the `cifar-jobs` command (.venv/bin/cifar-jobs), editable: only the cli
# package is installed, the service runs from the checkout.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

## Start the API and one worker on the embedded default (SQLite + SQLite broker) and print the URL.
run: $(STAMP)
	$(PY) -m app.serve

## Only the API (for scale-out setups where workers run elsewhere).
api: $(STAMP) migrate
	$(PY) -m uvicorn app.main:app --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

## Only a worker: one per GPU, e.g. CUDA_VISIBLE_DEVICES=1 make worker
worker: $(STAMP)
	$(PY) -m worker

migrate: $(STAMP)
	$(PY) -m alembic upgrade head

## The whole test suite (PostgreSQL and Redis tests skip with a reason when the servers are absent, fail under CI=true),
## in two passes: the in-process tests on two processes, then the end-to-end tests (real API, worker and
## server processes, which time leases and heartbeats) one at a time. Both passes run; either failing fails.
test: $(STAMP)
	$(PY) -m pytest -n 2 -m "not e2e"; first=$$?; \
	$(PY) -m pytest -m e2e; second=$$?; \
	test $$first -eq 0 && test $$second -eq 0

## The pure and database tiers without the slow tests, on two processes: no API, worker,
## Redis or PostgreSQL server is started, no network is trained for long.
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not e2e and not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## Training throughput of the engine against a naive DataLoader loop, in alternating rounds.
BENCH_ARGS ?= --device cpu --precision fp32 --compile off --images 256 --rounds 3 --batch-size 128
bench: $(STAMP)
	$(PY) -m bench.train_throughput $(BENCH_ARGS)

## Wheels (CPython 3.12, manylinux x86-64) of the service's dependencies that the GPU image lacks,
## for bench/gpu_check.sh on a machine without network; stays well under the 64 MiB carry limit.
WHEEL_TARGET := --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
WHEELHOUSE_MAX_MIB := 48
wheels: $(STAMP)
	rm -rf wheelhouse && mkdir -p wheelhouse
	$(PY) -m pip download -q $(WHEEL_TARGET) -d wheelhouse -r bench/gpu-check-requirements.txt -c constraints.txt
	$(PY) -m pip download -q $(WHEEL_TARGET) --no-deps -d wheelhouse ptflops -c constraints.txt
	@size=$$(du -sm wheelhouse | cut -f1); echo "wheelhouse: $$(ls wheelhouse | wc -l) wheels, $$size MiB"; \
	test $$size -le $(WHEELHOUSE_MAX_MIB) || { echo "wheelhouse is over $(WHEELHOUSE_MAX_MIB) MiB"; exit 1; }

## The GPU check (docs/benchmarks.md): throughput, the service's epochs, concurrent jobs. GPU_CHECK_TINY=1 on a CPU.
gpu-check:
	bash bench/gpu_check.sh

## A small generated dataset in the official CIFAR-100 format under ./data (for demos without internet):
## 10 classes, 2,000 training images, enough optimizer steps for a 3-epoch demo job to learn.
data: $(STAMP)
	$(PY) -m engine generate-data --out data --dataset cifar100 --classes 10 --train-per-class 200 --test-per-class 100

clean:
	rm -rf var artifacts .pytest_cache
