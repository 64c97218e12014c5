# Two commands do everything on a fresh machine:
#   make demo   - set up .venv, then train, evaluate, fuse, re-evaluate and export on built-in data
#   make test   - set up .venv, then run the test suite
#   make docs   - build the documentation into docs/_build/html (warnings are errors, nitpicky)
PY := .venv/bin/python
STAMP := .venv/.mmrep-installed

.PHONY: demo test setup benchmark docs

$(STAMP): scripts/setup_env.sh scripts/mmcv_wheel.sh requirements.txt setup.py
	bash scripts/setup_env.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider

benchmark: $(STAMP)
	$(PY) tools/benchmark.py --out benchmarks

# -E -a: a fresh build every time, so that no warning hides in a cached page
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -n -E -a -b html -d docs/_build/doctrees docs/en docs/_build/html
