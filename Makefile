# make demo / make test each create .venv if missing and install the project into it
# (pinned by constraints.txt); reinstalling only when pyproject.toml or constraints.txt change.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
# Two test workers (pytest-xdist), a module each at a time, so module fixtures are set up once; the
# slow modules are scheduled first, longest first (tests/conftest.py; --no-loadscope-reorder keeps
# that order, which xdist would otherwise replace by the number of tests). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

.PHONY: demo test lint bench venv clean image push manifests

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -qq -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rnnjobs demo

# pytest exits 5 when it collects nothing: say so loudly instead of failing obscurely.
test: $(STAMP)
	$(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS) || { rc=$$?; if [ $$rc -eq 5 ]; then \
	  echo "pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc; }

lint: $(STAMP)
	$(VENV)/bin/ruff check rnnlib jobs tests bench

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf outputs .pytest_cache bench/results

# The cluster image is tagged by the commit it is built from, REGISTRY/rnnjobs:ray-<ray pin>-<short sha>;
# the manifests under cluster/ name REGISTRY/rnnjobs:ray-<ray pin>-COMMIT, and cluster/render.py writes
# copies with the tag filled in under $(RENDERED): apply those. `make image push REGISTRY=...` builds,
# renders and pushes; `make manifests REGISTRY=... COMMIT=<sha>` renders for an image built earlier.
REGISTRY    ?=
RENDERED    ?= outputs/cluster
RAY_VERSION := $(shell sed -n 's/^ray==//p' constraints.txt)
HEAD_SHA    := $(shell git rev-parse --short=12 HEAD 2>/dev/null)
COMMIT      ?= $(HEAD_SHA)
PYTHON      ?= $(if $(wildcard $(PY)),$(PY),python3)
IMAGE_SRC   := pyproject.toml constraints.txt README.md rnnlib jobs cluster/Dockerfile

define need_registry
	@test -n "$(REGISTRY)" || { echo "make $@: set REGISTRY, e.g. REGISTRY=123456789012.dkr.ecr.us-east-1.amazonaws.com"; exit 2; }
endef

# An image tagged with a commit must hold that commit: uncommitted changes to what the Dockerfile
# copies would make the tag lie, so they stop the build.
image:
	$(need_registry)
	@test -z "$$(git status --porcelain -- $(IMAGE_SRC))" || { git status --short -- $(IMAGE_SRC); \
	  echo "make image: commit these first (the image is tagged by the commit it is built from)"; exit 2; }
	docker build -f cluster/Dockerfile -t $(REGISTRY)/rnnjobs:ray-$(RAY_VERSION)-$(HEAD_SHA) .
	$(PYTHON) cluster/render.py --registry $(REGISTRY) --commit $(HEAD_SHA) --out $(RENDERED)

push:
	$(need_registry)
	docker push $(REGISTRY)/rnnjobs:ray-$(RAY_VERSION)-$(HEAD_SHA)

manifests:
	$(need_registry)
	$(PYTHON) cluster/render.py --registry $(REGISTRY) --commit $(COMMIT) --out $(RENDERED)
