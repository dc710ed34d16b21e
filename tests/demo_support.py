"""The demo's own modules (scripts/ is no package: the demo runs as `python scripts/demo.py`) and
the config it writes, for the tests that check what it prints and what the README says about it."""
from __future__ import annotations

import sys
from pathlib import Path

from common.config import Config, parse_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import demo  # noqa: E402  (scripts/ on the path first)
import demo_steps  # noqa: E402
import demo_summary  # noqa: E402

#: How the README and the demo's printed commands name the config (run from the repository root).
DEMO_CONFIG = Path("demo-data") / "config.yaml"


def demo_config() -> Config:
    """The config the demo writes (storage: local), without running it."""
    document = demo.config_document("host=127.0.0.1 dbname=archiver_demo", {"storage": "local", "local_dir": str(demo.WORK / "archive")})
    return parse_config(document, source=str(DEMO_CONFIG))


__all__ = ["DEMO_CONFIG", "demo", "demo_config", "demo_steps", "demo_summary"]
