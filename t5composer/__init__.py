"""t5composer: pre-train and fine-tune T5-style encoder-decoder models with Composer."""

__version__ = "0.1.0"
