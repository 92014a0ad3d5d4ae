# Two commands set up everything: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CRYPTEN := crypten==0.4.1
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-all lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq -e '.[test]'
	# CrypTen declares dependencies that cannot be installed (sklearn, torchvision);
	# its real runtime needs are pinned in pyproject.toml.
	$(PY) -m pip install -qq --no-deps $(CRYPTEN)
	touch $(STAMP)

# The console's browser test drives Debian's Chromium; Playwright downloads no browser.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

demo: $(STAMP)
	$(PY) -m pet demo

test: $(STAMP) $(CHROMIUM)
	$(PY) -m ruff check pet services tests benchmarks
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile

test-all: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check pet services tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
