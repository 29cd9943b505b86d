"""Fitting a trained model to a new site (hospital, scanner): the decision threshold and
temperature refitted on a small labelled local sample (:mod:`.calibrate`), BatchNorm
statistics re-estimated on unlabelled local images (:mod:`.adapt`), both recorded in the
checkpoint (``ModelInfo.site``)."""
