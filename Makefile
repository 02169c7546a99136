# Two commands matter: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export UV_PYTHON_DOWNLOADS := never
export OPENBLAS_NUM_THREADS := 1

.DEFAULT_GOAL := help
.PHONY: help install tools container-tools run demo-loop test test-unit lint format bench-warehouse bench-ml bench-api bench-loop bench-scale docs dashboards airflow base-image images clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

# --compile-bytecode: the modules' .pyc files are written once here. Where Python may not write
# them itself (PYTHONDONTWRITEBYTECODE, as on this project's machines and CI), every process
# would otherwise compile what it imports from source: `import api.loader` took 0.93-1.24 s
# instead of 0.30 s, and the tests start hundreds of processes (servers, dbt, Airflow).
install: ## install uv if missing and sync the locked environment (.venv), every extra
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@$(UV) sync --frozen --all-extras --compile-bytecode --quiet

# Prometheus and promtool 2.42, Alertmanager and amtool 0.25 from Debian's packages, unpacked into
# .tools/ (no system install, none of the packages' dependencies): the monitoring tests start the
# real servers and check the project's configs with the real tools.
PROMETHEUS := .tools/prometheus/usr/bin/prometheus
ALERTMANAGER := .tools/alertmanager/usr/bin/prometheus-alertmanager
APT_GET := apt-get -qq -o APT::Sandbox::User=root
CHECKOV := .tools/checkov/bin/checkov
tools: $(PROMETHEUS) $(ALERTMANAGER) $(CHECKOV) container-tools ## the test tools outside the project's environment: Prometheus, promtool, Alertmanager, amtool (Debian), checkov (its own lock), podman, runc, debootstrap

# podman, runc and debootstrap (Debian's packages, installed on the system: podman needs its
# configuration and helpers): the image test builds a base with debootstrap and runs the API image
container-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
		{ DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y podman runc debootstrap debian-archive-keyring >/dev/null || \
		{ $(APT_GET) update && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y podman runc debootstrap debian-archive-keyring >/dev/null; }; }

# checkov's releases cap termcolor below Airflow's floor: its own locked environment
$(CHECKOV): tools/checkov/uv.lock tools/checkov/pyproject.toml
	@UV_PROJECT_ENVIRONMENT=$(CURDIR)/.tools/checkov $(UV) sync --frozen --compile-bytecode --quiet --project tools/checkov
	@touch $(CHECKOV)

$(PROMETHEUS):
	@mkdir -p .tools/deb-prometheus
	@cd .tools/deb-prometheus && { $(APT_GET) download prometheus || { $(APT_GET) update && $(APT_GET) download prometheus; }; }
	@dpkg -x .tools/deb-prometheus/prometheus_*.deb .tools/prometheus
	@rm -rf .tools/deb-prometheus
	@$(PROMETHEUS) --version | head -1

$(ALERTMANAGER):
	@mkdir -p .tools/deb-alertmanager
	@cd .tools/deb-alertmanager && { $(APT_GET) download prometheus-alertmanager || { $(APT_GET) update && $(APT_GET) download prometheus-alertmanager; }; }
	@dpkg -x .tools/deb-alertmanager/prometheus-alertmanager_*.deb .tools/alertmanager
	@rm -rf .tools/deb-alertmanager
	@$(ALERTMANAGER) --version 2>&1 | head -1

run: install ## demo data -> lake -> warehouse -> ALS + CatBoost -> evaluation -> snapshot
	$(UV) run recsys run

demo-loop: install ## the closed loop: serve, simulated shoppers, ingest, dbt build, business metrics and experiments (data/loop)
	$(UV) run recsys loop

test: install tools ## the whole test suite (real dbt / DuckDB / S3 server / Prometheus)
	$(UV) run pytest -n 2 --dist loadfile

test-unit: install ## unit tests only
	$(UV) run pytest tests/unit

lint: install ## ruff, formatting, mypy, the import layers (pyproject's importlinter), sqlfluff on the dbt SQL
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy
	PYTHONPATH=dags $(UV) run lint-imports
	@# the dbt templater compiles the project (fixed vars in dbt_project/.sqlfluff) against a
	@# scratch warehouse, never the one under ./data
	@scratch=$$(mktemp -d) && cd dbt_project && RECSYS_DATA_DIR=$$scratch $(UV) run sqlfluff lint models analyses tests; status=$$?; rm -rf $$scratch; exit $$status

format: install ## apply ruff's formatting and fixes
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

bench-warehouse: install ## generate full scale, ingest, dbt build; seconds and peak RSS per stage
	$(UV) run python benchmarks/bench_warehouse.py

BENCH_ML := data/bench/ml
bench-ml: install ## recsys run end to end on full scale; ALS, ranker and total seconds, peak RSS
	$(UV) run python benchmarks/bench_ml.py --work-dir $(BENCH_ML)

bench-api: install ## recsys serve on the full-scale snapshot of bench-ml: throughput, p99, RSS, swaps
	@test -f $(BENCH_ML)/data/lake/snapshots/LATEST || $(MAKE) bench-ml
	$(UV) run python benchmarks/bench_api.py --data-dir $(BENCH_ML)/data

bench-loop: install ## A/B, A/A x20, SRM and interleaving on simulated shoppers (data/bench/loop, ~30 min)
	$(UV) run python benchmarks/bench_loop.py --work-dir data/bench/loop --fresh

bench-scale: install ## every stage's seconds and peak RSS at 0.25-2x full scale, fitted: where one machine stops (data/bench/scale, ~1 h)
	$(UV) run python benchmarks/bench_scale.py

docs: install ## dbt docs (offline) into dbt_project/target
	cd dbt_project && ../.venv/bin/dbt docs generate --profiles-dir .

dashboards: install ## Grafana's dashboards as JSON (grafana-foundation-sdk) into monitoring/grafana/dashboards
	$(UV) run python -m monitoring.grafana.dashboards

# Airflow's home, the dbt manifest the DAGs render from and the warehouse lease live under
# RECSYS_DATA_DIR (default ./data); the UI listens on 127.0.0.1 only (AIRFLOW_PORT, default 8080).
airflow: install ## Airflow standalone on 127.0.0.1 with the recsys DAGs (home under RECSYS_DATA_DIR)
	@set -e; \
	data_dir="$$(realpath -m "$${RECSYS_DATA_DIR:-data}")"; port="$${AIRFLOW_PORT:-8080}"; \
	export PATH="$(CURDIR)/.venv/bin:$$PATH" RECSYS_DATA_DIR="$$data_dir" AIRFLOW_HOME="$$data_dir/airflow" \
		AIRFLOW__CORE__DAGS_FOLDER="$(CURDIR)/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False \
		AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$$port" \
		AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$$port/execution/" \
		AIRFLOW__COSMOS__ENABLE_TELEMETRY=False AIRFLOW__COSMOS__CACHE_DIR="$$data_dir/airflow/cosmos"; \
	echo "dbt manifest for the DAGs (dbt parse) ..."; \
	PYTHONPATH=dags .venv/bin/python -m recsys_airflow.dbt_graph; \
	.venv/bin/airflow db migrate >/dev/null; \
	.venv/bin/airflow pools set recsys_warehouse 1 "one task at a time on warehouse.duckdb (DuckDB: one writer per file)" >/dev/null; \
	echo "Airflow home $$AIRFLOW_HOME; UI on http://127.0.0.1:$$port (user admin, password in $$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)"; \
	exec .venv/bin/airflow standalone

# Container images (images/*.Dockerfile), built with podman, which reads images/containers.conf
# (runc, explicit ulimits). BASE_IMAGE is the official slim image by default; where no registry
# can be reached, `make base-image` makes a Debian bookworm one with debootstrap (as root) and
# `make images BASE_IMAGE=localhost/recsys-base:bookworm` builds from it. The host's uv cache is
# mounted into the builds (images/build.sh): the locked wheels are not downloaded again.
BASE_IMAGE ?= docker.io/library/python:3.11-slim-bookworm
IMAGES := api monitoring pipeline
PODMAN_ENV = CONTAINERS_CONF="$${CONTAINERS_CONF:-$(CURDIR)/images/containers.conf}"

base-image: ## a local Debian bookworm + Python 3.11 base image, localhost/recsys-base:bookworm (debootstrap; root)
	@$(PODMAN_ENV) images/base.sh localhost/recsys-base:bookworm

images: ## recsys-{api,monitoring,pipeline}:local with podman (BASE_IMAGE=localhost/recsys-base:bookworm where nothing can be pulled)
	@set -e; cache="$$($(UV) cache dir 2>/dev/null || true)"; \
	for name in $(IMAGES); do \
		$(PODMAN_ENV) UV_CACHE_DIR="$$cache" images/build.sh $$name "$(BASE_IMAGE)"; \
	done; \
	for name in $(IMAGES); do \
		size=$$($(PODMAN_ENV) podman image inspect --format '{{.Size}}' recsys-$$name:local); \
		printf '  %-26s %5d MB\n' recsys-$$name:local $$((size / 1000000)); \
	done

clean: ## remove generated data and build output
	rm -rf data dbt_project/target dbt_project/logs reports .tools
