"""The artifact: the notebooks' context (``report``), the papermill batch (``plan``,
``pipeline``; no torch), the runs prepared in worker processes (``prepare``), and the
throughput benchmarks (``costs``, ``bench``)."""
