"""ftmix: choose, predict and run the fastest fine-tuning optimization mixture that fits."""

__version__ = "0.1.0"
