"""Stress validation: the validation split replayed under the perturbations a new site brings."""
