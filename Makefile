# The two commands of the README: `make demo` (main job) and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash scripts/bootstrap.sh

demo:
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q
