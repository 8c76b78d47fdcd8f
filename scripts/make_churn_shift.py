"""Write the bundled concept-drift example: mlplatform/examples/data/churn_shift.csv.gz.

14 weeks from 2024-01-01 of 400 synthetic customers each; the outcome rule flips from week 11 (2024-03-18) on,
while the inputs keep their distribution (mlplatform/demo/synthetic.py says how). Deterministic: the same file each
time. Run: .venv/bin/python scripts/make_churn_shift.py
"""

from datetime import date
from pathlib import Path

from mlplatform.demo.synthetic import churn_weeks

START = date(2024, 1, 1)
RULES = ["A"] * 11 + ["B"] * 3
OUTPUT = Path(__file__).resolve().parent.parent / "mlplatform" / "examples" / "data" / "churn_shift.csv.gz"


def main() -> None:
    frame = churn_weeks(START, RULES)
    frame.to_csv(OUTPUT, index=False, compression={"method": "gzip", "mtime": 0})
    print(f"wrote {OUTPUT}: {len(frame)} rows, weeks {START} + {len(RULES)}, rule B from week {RULES.index('B')}")


if __name__ == "__main__":
    main()
