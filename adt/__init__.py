"""Adversarial Distributional Training (Dong et al., NeurIPS 2020): the compute core.

Modules, one idea each, from the bottom up: ``runtime`` (devices, modes, RNG, autocast),
``provenance`` (output folders, manifest; no torch), ``data`` (datasets on the device),
``models`` (classifiers, generators), ``distributions`` (the tanh-Gaussian),
``primitives`` (losses, gradients, the l_inf ball, sign ascent); ``inner`` (the inner
maximisers) beside ``attacks`` (the evaluation attacks); ``methods`` (methods by name),
``profiles`` (named settings), ``runs`` (checkpoints, resume), ``train`` (Algorithm 1);
``protocol``, ``sanity``, ``table`` and ``evaluate`` (the robustness table); ``analysis``
(diversity, loss surfaces, curvature); ``report``, ``plots``, ``pipeline`` and ``bench`` on
top. See REPRODUCTION.md for the release's settings this package follows.
"""

__version__ = "0.1.0"
