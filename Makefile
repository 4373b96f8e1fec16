# `make test` sets up .venv/ if needed (tools/setup.sh, idempotent) and runs the fast tests.
PY := .venv/bin/python
STAMP := .venv/.setup-stamp

.PHONY: setup test test-all lint lock clean-venv

setup:
	bash tools/setup.sh

# pytest exits 5 when it collects nothing: say so instead of passing or failing silently.
test: setup
	$(PY) -m pytest -q; rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests"; exit $$rc

test-all: setup
	$(PY) -m pytest -q -m ""

lint: setup
	.venv/bin/ruff check .

# Re-resolve exact versions after editing requirements/base.in.
lock: setup
	.venv/bin/uv pip compile requirements/base.in -o requirements/lock.txt --python-version 3.11 --no-header

clean-venv:
	rm -rf .venv
