"""Saved models at work: the Predictor, its backends (PyTorch, compiled, ONNX Runtime) and ONNX export."""
