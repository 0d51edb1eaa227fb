# The two commands a newcomer needs: `make run` and `make test`. Both build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench peers

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/radbridge run

# The peers the tests start on 127.0.0.1: dcmtk's tools, Orthanc and its DICOMweb plugin (Debian
# packages); Debian's chromium renders the compliance report to PDF (and drives the browser tests).
# A policy-rc.d (exit 101) keeps the install from starting Orthanc's own service; the tests start and
# stop their own Orthanc on free ports and never use the system one.
peers:
	@{ command -v storescu && { command -v Orthanc || test -x /usr/sbin/Orthanc; } \
	  && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so && command -v chromium; } >/dev/null || { \
	  set -e; SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  if test -e /usr/sbin/policy-rc.d; then made=; else made=1; \
	    printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null; $$SUDO chmod 755 /usr/sbin/policy-rc.d; fi; \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends dcmtk orthanc orthanc-dicomweb chromium; } || status=$$?; \
	  if test -n "$$made"; then $$SUDO rm -f /usr/sbin/policy-rc.d; fi; \
	  exit $${status:-0}; }

test: $(STAMP) peers
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/radbridge lint

bench: $(STAMP)
	for b in benchmarks/*_bench.py; do $(BIN)/python $$b || exit 1; done
