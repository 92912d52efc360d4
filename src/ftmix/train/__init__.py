"""The only place where torch, transformers, peft and DeepSpeed live together. Import submodules
directly (``ftmix.train.run``); this package imports nothing heavy itself."""
