"""Training with PyTorch Lightning: the module and the run driver."""
