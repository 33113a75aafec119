"""`cvops` with the test stages of helpers/stages.py registered (for subprocess tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.stages import register  # noqa: E402

from cvops.cli import main  # noqa: E402

register()
sys.exit(main())
