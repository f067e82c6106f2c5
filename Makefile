# make demo / make test each create .venv if missing and install the project into it
# (pinned by constraints.txt); reinstalling only when pyproject.toml or constraints.txt change.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -qq -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rnnjobs demo

# pytest exits 5 when it collects nothing: say so loudly instead of failing obscurely.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) || { rc=$$?; if [ $$rc -eq 5 ]; then \
	  echo "pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc; }

lint: $(STAMP)
	$(VENV)/bin/ruff check rnnlib jobs tests bench

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf outputs .pytest_cache bench/results
