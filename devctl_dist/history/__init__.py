"""Run history: every run recorded as it changes (SQLite + per-step log files under the state directory)."""
