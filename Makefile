# `make demo` installs ARLON into .venv/ and generates a video; `make test` installs and runs the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo/arlon.mp4
DEMO_PROMPT ?= a red circle moves right and a blue square moves up on a black background

.PHONY: install install-dev chromium demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,serve]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	mkdir -p $(dir $(DEMO_OUT))
	$(BIN)/arlon generate "$(DEMO_PROMPT)" --frames 600 --steps 5 -o $(DEMO_OUT)

# The web page's tests drive Debian's chromium through playwright (whose own download needs a network).
chromium:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -qq chromium \
		|| { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed (root and Debian's archive needed): the browser tests skip"

test: install-dev chromium
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) demo .pytest_cache
