"""Predictive auto-scaler: entry points, settings and the command-line interface."""
