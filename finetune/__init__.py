"""Fine-tune a small chat LLM on your own data: library, CLI (`python -m finetune --help`) and app."""

__version__ = "0.1.0"
