"""Evaluation of any classifier: the protocol (which attacks of :mod:`adt.attack` a table
runs), the robustness table and its checks against false robustness, the engine that fills
the table, stored tables of trained runs, and checkpoint files of any origin."""
