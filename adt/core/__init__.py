"""The primitives everything stands on: argument checks, file writes, the runtime (devices,
modes, RNG, autocast), datasets, models, and the losses, gradients and the l_inf ball."""
