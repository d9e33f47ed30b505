# osteobench: the two commands of the README.
#   make demo   create .venv, install, run the main job on the built-in phantom
#   make test   create .venv if needed, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned here so pip takes the build that lies on this machine's disk;
# on your own machine override it, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo
# `make test` leaves out tests marked slow (whole smoke suites); `make test-slow` runs only those.
# Both spread the test files over one worker process per CPU (pytest-xdist, at most 4): each test
# runs torch on one thread (tests/conftest.py), so a single process would leave the other cores idle.
# A file's tests stay in one worker (--dist loadfile): its module fixtures are built once.
XDIST_ARGS ?= -n auto --maxprocesses 4 --dist loadfile
PYTEST_ARGS ?= -m "not slow" $(XDIST_ARGS)
STAMP := $(VENV)/.osteobench-installed

.PHONY: demo test test-slow install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	# the cluster extras (Ray, psycopg) are optional: their tests skip with a reason when absent
	$(VENV)/bin/python -m pip install -q -e '.[test,cluster]' || echo "osteobench: cluster extras not installed; cluster tests will skip"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bench demo --out $(DEMO_DIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow $(XDIST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
