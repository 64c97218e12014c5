# Two commands do everything on a fresh machine:
#   make demo   - set up .venv, then train, evaluate, fuse, re-evaluate and export on built-in data
#   make test   - set up .venv, then run the test suite
#   make docs   - build the documentation into docs/_build/html (warnings are errors, nitpicky)
# and one checks the oldest supported stack:
#   make test-compat - set up the 'classic' stack (Python 3.10, torch 2.1.2) in .venv-classic,
#                      then run the compat subset of the tests there (pytest -m compat)
PY := .venv/bin/python
STAMP := .venv/.mmrep-installed
SETUP_DEPS := scripts/setup_env.sh scripts/mmcv_wheel.sh requirements.txt setup.py mmrep/version.py
CLASSIC := .venv-classic
CLASSIC_STAMP := $(CLASSIC)/.mmrep-installed

.PHONY: demo test test-compat setup setup-classic benchmark docs

$(STAMP): $(SETUP_DEPS) requirements/current.txt
	bash scripts/setup_env.sh
	touch $(STAMP)

$(CLASSIC_STAMP): $(SETUP_DEPS) requirements/classic.txt
	MMREP_STACK=classic MMREP_VENV=$(CLASSIC) bash scripts/setup_env.sh
	touch $(CLASSIC_STAMP)

setup: $(STAMP)

setup-classic: $(CLASSIC_STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider

test-compat: $(CLASSIC_STAMP)
	$(CLASSIC)/bin/python -m pytest tests -m compat -q -p no:cacheprovider

# every published benchmark figure; on an idle machine (see benchmarks/commands.sh)
benchmark: $(STAMP)
	bash benchmarks/commands.sh

# -E -a: a fresh build every time, so that no warning hides in a cached page
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -n -E -a -b html -d docs/_build/doctrees docs/en docs/_build/html
