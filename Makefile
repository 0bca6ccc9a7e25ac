# The two quick-start commands are `make demo` and `make test`; both set up what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup demo test test-faults check bench clean

setup:
	@bash scripts/setup.sh test

demo: setup
	$(PY) examples/experiment.py --testbed 4

test: setup
	$(VENV)/bin/pytest -m "not slow"

# The fault suite with its slow variants (long keepalives, big payloads, the load test).
test-faults: setup
	$(VENV)/bin/pytest tests/faults

check: setup
	$(VENV)/bin/ruff check sshfleet tests agents bench examples
	$(VENV)/bin/ruff format --check sshfleet tests agents bench examples
	$(VENV)/bin/mypy

bench:
	@bash scripts/setup.sh test,bench
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
