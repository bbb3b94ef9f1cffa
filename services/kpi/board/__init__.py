"""The live board of the KPI API (see board.py)."""
