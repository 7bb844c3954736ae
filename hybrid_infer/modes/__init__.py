"""Execution modes behind one API: `hybrid` (the warm pool) and `udf` (the baseline)."""
