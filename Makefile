# Entry points. `make bench` runs the whole performance suite (root, ~10 min on 2 cores) and
# appends its table to bench/RESULTS.md; `make test` runs the test suite.
PYTHON ?= .venv/bin/python

.PHONY: bench bench-quick test venv

venv:
	@test -x $(PYTHON) || ./scripts/setup

bench: venv
	$(PYTHON) bench/run_all.py

# Small sizes, nothing recorded: for checking the suite itself (~3 min).
bench-quick: venv
	$(PYTHON) bench/run_all.py --quick --no-results

test:
	./scripts/test
