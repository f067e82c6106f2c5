"""rnnlib: recurrent models, leak-free stock and text datasets, a training loop, bundles.

Plain PyTorch, pandas and numpy; it never imports Ray (the jobs in ``jobs/`` do).
"""

__version__ = "0.1.0"
