"""AI Studio: import images, split, train, evaluate and export image models on Ray."""

__version__ = "0.1.0"
