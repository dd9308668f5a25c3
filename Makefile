# The two commands of the README. Everything the project needs is installed from here.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup clean

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-system.sh
	bash scripts/setup-system.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m sdbnn_deploy.aarch64 fetch
	touch $@

# Optional: our models against Larq Compute Engine 0.16 (own environment .venv-lce, created on first use,
# about 1.4 GB; never part of setup or test). Same run, same machine; writes bench-lce.json.
.PHONY: bench-lce
LCE_MODELS := vgg_small-static,resnet20-static,resnet18-static
bench-lce: $(STAMP)
	$(VENV)/bin/sdbnn-deploy bench --lce --models $(LCE_MODELS) --threads 1,2 --json bench-lce.json

clean:
	rm -rf $(VENV) build demo-out
