"""Drift monitoring: what each adapter version was trained on (its reference profile) against what it sees live.

The hub side lives here (profiles, statistics, stored snapshots, the `loradock drift` command); the server feeds
live windows from its own thread (server/drift_monitor.py).
"""
