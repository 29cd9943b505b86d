"""Knowing when not to answer: features, the out-of-distribution detector,
foreign-image probes and the evaluation of the flag."""
