"""The composition root: the `linepulse` command and the demo.

The only package that imports more than one service: it builds settings, wires the
services (`services/ingest`, `services/kpi`, `services/alerts`) to the common layer
(`linepulse/`) and runs them. Nothing imports it; the import contract in pyproject.toml
(`[tool.importlinter]`, run by `lint-imports`) keeps the layers so.
"""
