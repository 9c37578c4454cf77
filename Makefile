# entropy_ops developer entry points. Works from a fresh clone with only python3 installed:
#   make install   venv + torch (pinned, CPU build) + the package, editable, with its native modules
#   make test      the CPU test suite, then the Triton-interpreter tests in their own process
#   make bench     python -m entropy_ops bench
#   make clean     build outputs (the next `make install` rebuilds); `make distclean` also the venv
SHELL := /bin/bash
.SUFFIXES:
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Pin torch before anything can pull it in: an unpinned resolve downloads GBs of CUDA wheels;
# 2.13.0 installs the CPU build from the local wheelhouse.
TORCH := torch==2.13.0
VENV_STAMP := $(VENV)/.stamp-venv
INSTALL_STAMP := $(VENV)/.stamp-install
# The set of native source files; rewritten only when a file is added or removed, so that a
# deletion also triggers a rebuild (mtimes alone miss it).
CSRC_LIST := $(VENV)/.csrc-files
CSRC := $(shell find csrc -type f 2>/dev/null | LC_ALL=C sort)
$(shell mkdir -p $(VENV) && printf '%s\n' $(CSRC) > $(CSRC_LIST).new && \
  { cmp -s $(CSRC_LIST).new $(CSRC_LIST) || cp $(CSRC_LIST).new $(CSRC_LIST); }; rm -f $(CSRC_LIST).new)

PYTEST := $(VPY) -m pytest tests -q -p no:cacheprovider

.PHONY: venv install test bench clean distclean

venv: $(VENV_STAMP)

install: $(INSTALL_STAMP)

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH)
	touch $@

# Editable install: Python edits need no reinstall; C++/CUDA edits rebuild via this stamp.
$(INSTALL_STAMP): $(VENV_STAMP) pyproject.toml setup.py $(CSRC) $(CSRC_LIST)
	$(PIP) install -e '.[test,bench]'
	touch $@

# Both runs always happen; pytest's exit code 5 (nothing collected) is fine for the interpreter run.
test: install
	@status=0; \
	$(PYTEST) -m "not gpu and not triton_interp" || status=$$?; \
	TRITON_INTERPRET=1 $(PYTEST) -m triton_interp || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no triton_interp tests collected"; else status=$$rc; fi; }; \
	exit $$status

bench: install
	$(VPY) -m entropy_ops bench

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find entropy_ops -name '*.so' -delete
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(INSTALL_STAMP)

distclean: clean
	rm -rf $(VENV)
