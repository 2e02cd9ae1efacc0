# `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: demo test clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(BIN)/natix demo-data $(DEMO)/images --n 200 --seed 0
	$(BIN)/natix demo-backbone $(DEMO)/backbone
	$(BIN)/natix extract $(DEMO)/images --backbone $(DEMO)/backbone --views 10 --cache $(DEMO)/cache
	@echo "--- the same command again: the cache already holds every image"
	$(BIN)/natix extract $(DEMO)/images --backbone $(DEMO)/backbone --views 10 --cache $(DEMO)/cache
	$(BIN)/natix cache ls --cache $(DEMO)/cache
	$(BIN)/natix cache info $(DEMO)/cache/*.h5
	$(BIN)/natix cache verify $(DEMO)/cache/*.h5

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .natix-cache
