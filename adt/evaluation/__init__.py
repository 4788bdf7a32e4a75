"""Evaluation of any classifier: attacks, the protocol (which attacks), the robustness
table and its checks against false robustness, the engine that fills the table, stored
tables of trained runs, and checkpoint files of any origin."""
