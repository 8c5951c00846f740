"""The shipped sweep files, installed as the package data of ``tinyray.sweeps`` (see pyproject.toml)."""
