# minivox: the two Quick-start commands are `make demo` and `make test` (see README.md).
# Both create .venv on first use (torch as a CPU build where one is at hand) and are fast after that.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.minivox-installed
# Debian packages the tests need: speech engines (data, VAD and browser tests) and chromium (the
# browser test); node + npm come from apt too when no node is installed (playwright-core drives chromium).
APT_PACKAGES := flite espeak-ng chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help demo test test-slow install system-deps browser-deps speech-engines clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

demo: $(STAMP)  ## install, then start the voice agent with the bundled models (open the URL it prints)
	$(BIN)/python -m minivox.serve demo

test: system-deps $(STAMP) browser-deps  ## install, then run the default test suite (under 5 minutes on 2 cores)
	@$(BIN)/python -m pytest -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; fi; exit $$rc

test-slow: system-deps $(STAMP) browser-deps  ## run the long checks (training runs, big comparisons)
	@$(BIN)/python -m pytest -q -m slow; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no slow tests are defined yet"; rc=0; fi; exit $$rc

install: $(STAMP)  ## create .venv and install minivox with its dev extra

$(STAMP): pyproject.toml tools/install.sh
	bash tools/install.sh $(VENV) $(PYTHON)
	@touch $@

system-deps:  ## install the Debian packages the tests use (apt-get), if missing
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install these packages with your OS package manager:$$missing" >&2; exit 1; fi; \
	fi

browser-deps: tests/browser/node_modules/.package-lock.json  ## node + playwright-core for the browser test

tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing: nodejs npm"; $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; }
	npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
	@touch $@

speech-engines:  ## install every speech engine for corpus synthesis (adds apt contrib/non-free)
	$(SUDO) bash tools/speech_engines.sh

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .hypothesis tests/browser/node_modules
	find . -name __pycache__ -prune -exec rm -rf {} +
