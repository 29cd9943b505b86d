"""The numbers behind a clinical decision: classification metrics with bootstrap
intervals, operating-point rules and calibration."""
