# amps-eval: `make demo` (installs if needed, then runs the embedded study offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.amps-eval-installed
DEMO_OUT ?= results/demo

.PHONY: install demo test bench clean

install: $(STAMP)

# CPU recipe (NOTES.md section 6); on a GPU machine `pip install amps-eval` is enough.
$(STAMP): pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q --no-deps "lmms-eval==0.7.3"
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import amps_eval.plugin, lmms_eval, transformers, torch; print('amps-eval installed: torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $(STAMP)

demo: install
	$(VENV)/bin/amps-eval demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_mcs.py

clean:
	rm -rf $(VENV) build dist *.egg-info
