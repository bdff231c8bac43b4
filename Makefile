# Developer and CI entry points. `make test` is the whole check: venv, envtest binaries, lint, and
# every test (the envtest ones start a real kube-apiserver 1.20 + etcd; see tests/conftest.py).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := test
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
# Every `python -m` runs with -P: the checkout's operator/ folder would otherwise shadow the
# standard library's `operator` module (a fresh venv imports it only after sys.path[0] is set).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where tests/envtest/build.sh puts kube-apiserver and etcd: a cache outside git, kept between runs.
ENVTEST_BIN ?= $(or $(SWITCHBOARD_ENVTEST_BIN),$(HOME)/.cache/switchboard/envtest-1.20)
# A real helm binary for the chart tests (tests/helm/get-helm.sh), cached the same way.
HELM_DIR ?= $(HOME)/.cache/switchboard/helm-3.6.2
LINT_PATHS := operator serving tests benchmarks
# mypy cannot follow the editable install's import hook (operator/ and serving/ are mapped to
# switchboard.operator / switchboard.serving by package-dir), so it reads the packages through
# this symlink tree; `mypy operator serving` would check them as top-level `operator` (shadowing
# the standard library's) and leave `switchboard.*` imports unresolved.
MYPY_PATH := $(VENV)/mypy-path
MYPY_LINKS := $(MYPY_PATH)/switchboard/operator $(MYPY_PATH)/switchboard/serving

.PHONY: venv envtest helm redis prometheus container-tools images lint test demo crds clean distclean

venv: $(STAMP) $(MYPY_LINKS)

# Re-installs only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	echo "==> venv"; t=$$SECONDS
	[[ -x $(BIN)/python ]] || $(PYTHON) -P -m venv $(VENV)
	$(BIN)/python -P -m pip install -e '.[dev]'
	touch $@
	echo "<== venv: $$((SECONDS - t))s"

$(MYPY_PATH)/switchboard/%:
	@mkdir -p $(@D)
	ln -sfn ../../../$* $@

envtest:
	echo "==> envtest"; t=$$SECONDS
	OUT=$(ENVTEST_BIN) bash tests/envtest/build.sh
	echo "<== envtest: $$((SECONDS - t))s"

helm:
	OUT=$(HELM_DIR) bash tests/helm/get-helm.sh

lint: venv
	echo "==> lint"; t=$$SECONDS
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	MYPYPATH=$(MYPY_PATH) $(BIN)/mypy -p switchboard.operator -p switchboard.serving
	$(BIN)/hadolint images/*.Containerfile
	bash -n images/build.sh images/podman.sh
	echo "<== lint: $$((SECONDS - t))s"

# Tests start a real Redis for the shared session store; Debian's package when it is missing.
redis:
	command -v redis-server >/dev/null || { \
	  sudo=; [[ $$EUID -eq 0 ]] || sudo="sudo -n"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends redis-server; }
	redis-server --version

# Rollout analyses and alert rules are tested against a real Prometheus and promtool (Debian's
# `prometheus` package carries both; its service is not used: tests start their own servers).
prometheus:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  sudo=; [[ $$EUID -eq 0 ]] || sudo="sudo -n"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends prometheus; }
	prometheus --version | head -1

# Images are built without a Docker daemon: mmdebstrap (base), buildah (build), podman + runc
# (run), all from Debian. See images/build.sh.
container-tools:
	command -v mmdebstrap >/dev/null && command -v buildah >/dev/null && \
	  command -v podman >/dev/null && command -v runc >/dev/null || { \
	  sudo=; [[ $$EUID -eq 0 ]] || sudo="sudo -n"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends \
	    mmdebstrap buildah podman runc uidmap; }
	podman --version

# The operator, tool-gateway and agent-runtime images, tagged localhost/switchboard/NAME:VERSION
# (and :dev). The base rootfs and the layer cache stay in $(CONTAINERS), outside git.
CONTAINERS ?= $(or $(SWITCHBOARD_CONTAINERS),$(HOME)/.cache/switchboard/containers)
images: venv container-tools
	echo "==> images"; t=$$SECONDS
	SWITCHBOARD_CONTAINERS=$(CONTAINERS) PYTHON=$(BIN)/python bash images/build.sh
	echo "<== images: $$((SECONDS - t))s"

test: venv envtest helm redis prometheus lint images
	echo "==> pytest"; t=$$SECONDS
	SWITCHBOARD_ENVTEST_BIN=$(ENVTEST_BIN) SWITCHBOARD_HELM=$(HELM_DIR)/helm \
	  SWITCHBOARD_CONTAINERS=$(CONTAINERS) $(BIN)/python -P -m pytest -q
	echo "<== pytest: $$((SECONDS - t))s"

# The project's main job on one machine: the quickstart agent on a local Ray Serve, in front of
# demo orders/ticketing systems. The demo NLU model is trained once (under a minute).
DEMO_NLU := .switchboard/demo-nlu
demo: venv
	[[ -f $(DEMO_NLU)/manifest.json ]] || \
	  $(BIN)/switchboard nlu train --data examples/nlu/ecommerce-intents.csv --out $(DEMO_NLU)
	RAY_AUTH_MODE=disabled exec $(BIN)/switchboard serve -f examples/quickstart/ \
	  --nlu-model $(DEMO_NLU) --demo-systems

# The chart carries the same CRDs (tests/test_chart.py checks they are identical).
crds: venv
	$(BIN)/switchboard crds
	cp crds/*.switchboard.dev.yaml charts/switchboard/crds/

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Also removes the virtualenv (the envtest binaries stay cached in $(ENVTEST_BIN)).
distclean: clean
	rm -rf $(VENV)
