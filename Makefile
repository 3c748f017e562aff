# The two commands of the README; both set everything up themselves (as root).
.PHONY: setup demo demo-stop test unit bench clean

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m devstack.demo

demo-stop:
	$(PY) -m devstack.demo --stop

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench: setup
	$(PY) bench/revert_bench.py

clean:
	rm -rf .venv *.egg-info
