# The two commands of the README: `make demo` (main job) and `make test`.
PY := .venv/bin/python

.PHONY: setup data demo test
setup:
	bash scripts/bootstrap.sh

data: setup
	test -f datasets/fashion_scenes/annotations/instances_val.json || $(PY) -m libra_rcnn.data --out datasets/fashion_scenes

demo:
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q
