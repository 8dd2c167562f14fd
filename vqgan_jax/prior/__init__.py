"""Stage 2, the transformer prior over a frozen tokenizer's codes: its config, the frozen
tokenizers it encodes with, its trainer, the samplers and `--mode=sample`."""
