"""Explanations of predictions: Grad-CAM heat maps and the shortcut check."""

METHOD_NAMES = ("gradcam", "gradcam++")
# Grad-CAM++ by default: plain Grad-CAM's map is all zero whenever the gradient-weighted
# channel sum is negative everywhere, which a dense head (the seed CNN's) often gives for
# one of the two classes; Grad-CAM++ weighs positive gradients only.
DEFAULT_METHOD = "gradcam++"
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}  # as people write them
