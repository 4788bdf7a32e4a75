"""The method of the paper: the tanh-Gaussian adversarial distribution, the inner
maximisers of Algorithm 1 (the baselines, ADT_EXP, the amortised generators) and the
registry of methods by name."""
