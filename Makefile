# Two commands for a fresh machine: `make run` and `make test`. Both create .venv and install what
# they need, system packages included (apt-get, as root or through sudo).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

# The test suite's PostgreSQL and Redis (the machine's own; tests create and drop test_router).
TEST_DATABASE_URL ?= postgres://$(shell id -un)@127.0.0.1:5432/router
TEST_BROKER_URL ?= redis://127.0.0.1:6379/7
# Most integration tests wait on processes and peers, not on the CPU: four pytest-xdist workers finish the
# suite in a quarter of the time on two cores. Each worker has its own database (test_router_gwN) and its own
# Redis database (7 + N, tests/conftest.py).
TEST_WORKERS ?= 4

WEB_PORT ?= 8000
SCP_PORT ?= 11112
SCP_AE_TITLE ?= ROUTER

.PHONY: run test lint bench venv system-test-deps services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The embedded default: SQLite and kombu's filesystem transport under ./var, nothing else to install.
# It loads the demo (docs/examples/demo.yaml, demo logins) and starts a demo PACS (pynetdicom's storescp on
# port $(DEMO_PACS_PORT), into var/demo-pacs) beside the Procfile's processes; `senddemo` sends studies.
DEMO_PACS_PORT ?= 11113
ROLES := web worker worker-deliver worker-stat beat scp

run: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py loaddemo --pacs-port $(DEMO_PACS_PORT)
	@echo
	@echo "  DICOM SCP   $(SCP_AE_TITLE) on 0.0.0.0:$(SCP_PORT)   (storescu -aec $(SCP_AE_TITLE) 127.0.0.1 $(SCP_PORT) FILE...)"
	@echo "  Demo        $(BIN)/python manage.py senddemo   (in another terminal: demo studies, routed and assigned)"
	@echo "  Worklist    http://127.0.0.1:$(WEB_PORT)/worklist/   (achen, bbaker, cdiaz or devans; password demo)"
	@echo "  Admin       http://127.0.0.1:$(WEB_PORT)/admin/   (admin / demo)"
	@echo "  Demo PACS   DEMO on 127.0.0.1:$(DEMO_PACS_PORT), files in var/demo-pacs"
	@echo "  Follow      $(BIN)/python manage.py studystatus STUDY_INSTANCE_UID"
	@echo
	@mkdir -p var/demo-pacs
	@$(BIN)/python -m pynetdicom storescp $(DEMO_PACS_PORT) -aet DEMO -od var/demo-pacs & pacs=$$!; \
	trap 'kill $$pacs 2>/dev/null' EXIT INT TERM; \
	WEB_PORT=$(WEB_PORT) SCP_PORT=$(SCP_PORT) SCP_AE_TITLE=$(SCP_AE_TITLE) PATH="$(abspath $(BIN)):$$PATH" \
		$(BIN)/honcho start -f Procfile $(ROLES)

# dcmtk (echoscu, storescu, storescp) and Orthanc are the tests' DICOM peers, Chromium their browser,
# HAProxy their load balancer, Prometheus (and promtool) their monitoring; PostgreSQL and Redis their services.
system-test-deps:
	@missing=""; \
	[ -x /usr/bin/storescu ] || missing="$$missing dcmtk"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	[ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	[ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v pg_ctlcluster >/dev/null || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then $(APT) update -qq && $(APT) install -y -qq $$missing; fi

services: system-test-deps
	@pg_isready -q -h 127.0.0.1 -p 5432 || $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
		redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv services lint
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) $(BIN)/pytest -n $(TEST_WORKERS)

# Benchmarks run on demand and report ratios against a peer measured in the same run (bench/README.md).
bench: venv services
	$(BIN)/python bench/rules_bench.py
	$(BIN)/python bench/assign_bench.py
	status=0; \
	$(BIN)/python bench/ingest_bench.py || status=1; \
	$(BIN)/python bench/route_bench.py || status=1; \
	$(BIN)/python bench/route_bench.py --modes on_receipt,after_qc --destinations fork,serial --no-references || status=1; \
	$(BIN)/python bench/stream_bench.py || status=1; \
	$(BIN)/python bench/latency_bench.py || status=1; \
	$(BIN)/python bench/latency_bench.py --assign-after-delivery || status=1; \
	$(BIN)/python bench/latency_bench.py --storage-commitment --runs 10 || status=1; \
	$(BIN)/python bench/backlog_bench.py || status=1; \
	$(BIN)/python bench/memory_bench.py || status=1; \
	$(BIN)/python bench/stall_bench.py || status=1; \
	$(BIN)/python bench/tls_bench.py || status=1; \
	$(BIN)/python bench/transform_bench.py || status=1; \
	$(BIN)/python bench/dicomweb_bench.py || status=1; \
	$(BIN)/python bench/qr_bench.py || status=1; \
	$(BIN)/python bench/hostile_bench.py || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) var
