"""Imagegate, the OpenAI-compatible image gateway: the one import name the product installs."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.2.0"

# Installed, pyproject maps the root folders (proxy/, middlewares/, adapters/, config/) into this
# package. In a source checkout they sit beside it instead: look there too, so the tests and
# `python -m imagegate` run the checkout's own code.
_here = Path(__file__).parent
if not (_here / "proxy").is_dir() and (_here.parent / "proxy" / "__init__.py").is_file():
    __path__.append(str(_here.parent))
