# Everything a fresh machine with Python 3.11 and make needs: `make run`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install run test bench lint clean

# pip prints a line per package (and a progress bar on a terminal): the first install takes minutes.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	@test -x $(PY) || { echo "creating $(VENV) …"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "installing requirements (TensorFlow is ~600 MB; the first time takes a few minutes) …"
	$(PY) -m pip install --progress-bar on -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	@touch $@

install: $(VENV)/.installed

run: install
	@echo "preparing the database under var/ …"
	@$(PY) manage.py migrate --noinput -v 0
	@$(PY) manage.py bootstrap
	@$(PY) manage.py runlocal

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
