"""Adversarial Distributional Training (Dong et al., NeurIPS 2020): the compute core.

Modules, one idea each: ``data`` (datasets on the device), ``models`` (classifiers,
generators), ``distributions`` (the tanh-Gaussian), ``inner`` (the inner maximisers),
``methods`` (methods by name), ``train`` (Algorithm 1), ``attacks`` and ``evaluate``
(the robustness table), ``analysis`` (diversity, loss surfaces, curvature),
``profiles`` (named experiment settings), ``bench`` (throughput).
"""

__version__ = "0.1.0"
