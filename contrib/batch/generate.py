"""Regenerate the templates in this folder from the code that `watchdog-singleton submit` uses:

    python3 contrib/batch/generate.py

tests/e2e/test_batch.py renders them again and fails when a committed file differs.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from watchdog_singleton.batch.schedulers import templates  # noqa: E402


def main() -> int:
    for filename, text in templates().items():
        path = os.path.join(HERE, filename)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755 if filename.endswith((".sh", ".sbatch")) else 0o644)
        print(f"wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
