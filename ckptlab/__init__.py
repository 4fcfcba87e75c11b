"""ckptlab: representation analyses over every checkpoint of language-model training runs."""

__version__ = "0.1.0"
