"""Write the GENERATED support-ticket example: examples/support_tickets/support_tickets.csv.

8 weeks from 2024-01-01 of 120 generated tickets each (mlplatform/demo/support_tickets.py says how); from week 6 on
the messages also name new products no earlier ticket mentions, so the text drift check has something to find.
Deterministic: the same file each time. Run: .venv/bin/python scripts/make_support_tickets.py
"""

from pathlib import Path

from mlplatform.demo.support_tickets import generated_tickets

WEEKS, PER_WEEK, NEW_PRODUCT_FROM_WEEK = 8, 120, 6
OUTPUT = Path(__file__).resolve().parent.parent / "examples" / "support_tickets" / "support_tickets.csv"


def main() -> None:
    frame = generated_tickets(weeks=WEEKS, per_week=PER_WEEK, seed=7, new_product_from_week=NEW_PRODUCT_FROM_WEEK)
    frame.to_csv(OUTPUT, index=False)
    print(f"wrote {OUTPUT}: {len(frame)} GENERATED tickets over {WEEKS} weeks")


if __name__ == "__main__":
    main()
