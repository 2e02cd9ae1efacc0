# `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: demo test clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO)
	@echo "--- 200 synthetic street scenes (half with small roadwork objects) and a tiny random DINOv3: nothing to download"
	$(BIN)/natix demo-data $(DEMO)/images --n 200 --seed 0
	$(BIN)/natix demo-backbone $(DEMO)/backbone
	@echo "--- tier 1: the backbone runs once over 10 views of every image (global + 3x3 tiles) into an HDF5 cache"
	$(BIN)/natix extract $(DEMO)/images --backbone $(DEMO)/backbone --views 10 --cache $(DEMO)/cache
	@echo "--- the same command again: the cache already holds every image"
	$(BIN)/natix extract $(DEMO)/images --backbone $(DEMO)/backbone --views 10 --cache $(DEMO)/cache
	$(BIN)/natix cache ls --cache $(DEMO)/cache
	$(BIN)/natix cache info $(DEMO)/cache/*.h5
	$(BIN)/natix cache verify $(DEMO)/cache/*.h5
	@echo "--- tier 2: a head trained from the cache (no backbone involved)"
	$(BIN)/natix fit-head $(DEMO)/cache/*.h5 --head mlp --agg attention --policy gate --oof-folds 3 --out $(DEMO)/runs/mlp-attention-gate
	$(BIN)/natix evaluate $(DEMO)/runs/mlp-attention-gate --split val_test
	$(BIN)/natix calibrate $(DEMO)/runs/mlp-attention-gate --method platt --exit ltt --alpha 0.3 --delta 0.2
	$(BIN)/natix report $(DEMO)/runs/mlp-attention-gate
	$(BIN)/natix fit-failure $(DEMO)/runs/mlp-attention-gate --model xgboost
	@echo "--- a cascade: a global-view-only stage 1, the 10-view head as stage 2"
	$(BIN)/natix extract $(DEMO)/images --backbone $(DEMO)/backbone --views 1 --cache $(DEMO)/cache-global -q
	$(BIN)/natix fit-head $(DEMO)/cache-global/*.h5 --head linear --agg global --out $(DEMO)/runs/global > /dev/null
	$(BIN)/natix cascade --stage1 $(DEMO)/runs/global --stage2 $(DEMO)/runs/mlp-attention-gate --budget 0.5 --out $(DEMO)/cascade
	@echo "--- export the cascade as one bundle and serve it on raw images"
	$(BIN)/natix export $(DEMO)/cascade --out $(DEMO)/bundle
	$(BIN)/natix predict $(DEMO)/bundle $(DEMO)/images/img_00000.jpg $(DEMO)/images/img_00001.jpg $(DEMO)/images/img_00002.jpg
	@echo "--- an ablation: four view aggregators x 2 seeds, one leaderboard with paired bootstrap CIs"
	$(BIN)/natix ablate $(DEMO)/cache/*.h5 --head linear --agg global,mean,max,attention --policy softmax --seeds 2 --out $(DEMO)/ablate -q
	@echo "--- judged under validator conditions: 4 validator-e1 draws per image (224x224 quality-75 JPEGs), global view"
	$(BIN)/natix extract $(DEMO)/images --backbone $(DEMO)/backbone --challenge validator-e1 --draws 4 --cache $(DEMO)/cache-e1
	$(BIN)/natix evaluate $(DEMO)/runs/global --under $(DEMO)/cache-e1/*.h5
	$(BIN)/natix ablate "clean=$(DEMO)/cache-global/*.h5,e1=$(DEMO)/cache-e1/*.h5" --under $(DEMO)/cache-e1/*.h5 --head linear --agg global --policy softmax --seeds 2 --out $(DEMO)/ablate-e1 -q
	@echo "--- fine-tuning the backbone: the random demo backbone reads nothing frozen, so this part uses an easier"
	@echo "    image set (objects 4x larger, no orange distractors) that full fine-tuning of the same backbone learns"
	$(BIN)/natix demo-data $(DEMO)/images-large --n 400 --seed 1 --object-scale 4 --hard-negatives 0
	$(BIN)/natix extract $(DEMO)/images-large --backbone $(DEMO)/backbone --views 1 --cache $(DEMO)/cache-large -q
	$(BIN)/natix finetune $(DEMO)/images-large --backbone $(DEMO)/backbone --method full --epochs 20 --lr 5e-4 --out $(DEMO)/runs/finetune --extract --cache $(DEMO)/cache-large -q
	$(BIN)/natix cache ls --cache $(DEMO)/cache-large
	@echo "--- frozen vs fine-tuned backbone, judged on the same val_test images (the older cache is the frozen one)"
	$(BIN)/natix ablate "frozen=$$(ls -tr $(DEMO)/cache-large/*.h5 | head -1),fine-tuned=$$(ls -t $(DEMO)/cache-large/*.h5 | head -1)" --head linear --agg global --policy softmax --seeds 3 --out $(DEMO)/ablate-finetune
	@echo "--- done: everything is under $(DEMO)/. Next: source $(BIN)/activate, then natix --help, or the README's"
	@echo "    commands (each runs as written on the demo data); make test runs the test suite"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .natix-cache
