"""optcv: measure, honestly and repeatably, how image classifiers train, tune and run on the CPU."""

__version__ = "0.1.0"
