# The README's two commands: `make serve` (set up + run on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv serve test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: pip takes the CPU wheel on disk instead of resolving a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	# the server install: the extra `server`, and an editable install in compat mode, which puts this
	# clone on sys.path, so app/ and worker/ (not in the wheel: it holds ml3core only) import from here
	$(BIN)/pip install -q -e '.[server,dev,tracking]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(BIN)/ml3 serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pip install -q --no-deps differentiable-robot-model==0.2.3 'urdf-parser-py>=0.0.4' 'pyyaml>=6' 'lxml>=5'
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[server,dev,tracking,bench]' --config-settings editable_mode=compat
	$(BIN)/python bench/meta_train.py
	$(BIN)/python bench/evaluate.py

clean:
	rm -rf $(VENV) runs var
