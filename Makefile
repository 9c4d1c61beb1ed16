# Set-up and everyday commands. Each target creates .venv on first use.
#
# torch is pinned: a bare "torch" or an open range can pull a multi-GB CUDA build where
# only the CPU one is needed. Override TORCH_SPEC to pick another build.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= demo_output

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/wmhseg preprocess --t1 examples/patient01/T1.nii.gz \
		--flair examples/patient01/FLAIR.nii.gz --subject patient01 \
		--out $(DEMO_OUT)/preprocessed --overwrite
	$(BIN)/wmhseg predict examples/patient01/FLAIR.nii.gz --modality flair \
		--out $(DEMO_OUT)/predictions --overwrite
	@echo
	@echo "Preprocessed images and QC picture: $(DEMO_OUT)/preprocessed/patient01/"
	@echo "WMH mask:       $(DEMO_OUT)/predictions/FLAIR_wmh.nii.gz"
	@echo "WMH statistics: $(DEMO_OUT)/predictions/wmh_stats.csv"
	@echo "QC picture:     $(DEMO_OUT)/predictions/FLAIR_wmh_qc.png"

# .venv/bin goes first on PATH so that tests find the tools the dev extra installs (hadolint).
test: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check wmhseg tests benchmarks
	$(BIN)/mypy wmhseg

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
