"""The study of the results: paired statistics over seeds and images, validity gates and
gated verdicts, the claims ledger, analyses (diversity, loss surfaces, curvature), figure
helpers, and the tuning of the quick recipe."""
