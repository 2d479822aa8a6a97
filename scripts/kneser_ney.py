"""The command line of odegpt_eval.kneser_ney (its docstring says what it does: `python scripts/kneser_ney.py --help`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, where odegpt_eval lives

from odegpt_eval.kneser_ney import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
