"""advlib: DeepFool and the classic gradient attacks, exact where the answer is known."""

__version__ = "0.1.0"
