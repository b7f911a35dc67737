# The two commands of the README: `make demo` (main job) and `make test`.
PY := .venv/bin/python

.PHONY: setup reference slurm demo test docs
setup:
	bash scripts/bootstrap.sh

# mmdetection 3.3, the reference the parity tests compare with (.venv-bench, git-ignored).
reference: setup
	bash benchmarks/setup_reference_env.sh

# Debian's SLURM for the SLURM tests, where the machine allows it (root and apt-get).
slurm:
	bash scripts/setup_slurm.sh --if-possible

demo:
	bash scripts/demo.sh

test: setup reference slurm
	$(PY) -m pytest -q

# Rewrite every generated block of README.md, docs/*.md and docs/reports/*.md from the committed results.
docs: setup
	$(PY) docs/generate.py
