"""Metrics, operating points, calibration, confidence intervals and plots."""
