"""The layers contract of pyproject.toml (`[tool.importlinter]`), run by `python -m pytest`
as well as by `lint-imports` in .ci/run: a service importing another service, or the
common layer importing a service, fails here with the import chain that does it."""

import logging
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_the_layers_and_the_independent_services_are_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # import-linter configures logging with `disable_existing_loggers`: every logger that
    # exists by then (the modules the other tests imported) would stay silent after it.
    loggers = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.disabled
    ]
    try:
        code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    finally:
        for logger in loggers:
            logger.disabled = False
    assert code == 0, capsys.readouterr().out


def test_every_module_under_services_is_in_a_layer() -> None:
    """The contract names `services.app` and the three services; a module or package put
    directly under `services/` would be in no layer and free to import anything."""
    layered = {"app", "ingest", "kpi", "alerts"}
    services = PYPROJECT.parent / "services"
    stray = sorted(
        entry.name
        for entry in services.iterdir()
        if entry.name not in layered
        and entry.name != "__init__.py"
        and (entry.suffix == ".py" or (entry / "__init__.py").is_file())
    )
    assert not stray, f"modules under services/ in no layer of pyproject.toml: {stray}"
