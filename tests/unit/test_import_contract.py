"""The layers contract of pyproject.toml (`[tool.importlinter]`), run by `python -m pytest`
as well as by `lint-imports` in .ci/run: a service importing another service, or the
common layer importing a service, fails here with the import chain that does it."""

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_the_layers_and_the_independent_services_are_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out
