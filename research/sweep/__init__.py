"""Hyperparameter sweeps (grid, random, Bayesian via Optuna) that train populations."""
