"""Training: Algorithm 1 as one loop (``loop``), run folders and checkpoints (``runs``),
the modules of a run built, seeded and restored (``modules``), data-parallel training
(``distributed``) and sweeps over methods and seeds (``sweep``)."""
