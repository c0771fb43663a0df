"""Tests of the slider editor (a package, so its conftest is ``serve.conftest`` and does not
shadow the ``conftest`` module other test folders import from)."""
