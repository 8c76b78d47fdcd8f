"""Write the GENERATED recommender example: examples/recommender_ctr/impressions.csv and clicks.csv.

6 weeks from 2024-01-01 of 400 generated impressions each, with their clicks (mlplatform/demo/recommender_clicks.py
says how); clicks.csv holds the same clicks as outcomes (`labels.path`): live clicks are appended to it by whatever
records them (the test writes simulated ones). Deterministic. Run: .venv/bin/python scripts/make_recommender_ctr.py
"""

from pathlib import Path

from mlplatform.demo.recommender_clicks import generated_impressions

FOLDER = Path(__file__).resolve().parent.parent / "examples" / "recommender_ctr"


def main() -> None:
    frame = generated_impressions()
    frame.drop(columns=["clicked"]).assign(clicked=frame["clicked"]).to_csv(FOLDER / "impressions.csv", index=False)
    frame[["impression_id", "ts", "clicked"]].to_csv(FOLDER / "clicks.csv", index=False)
    print(f"wrote {FOLDER}: {len(frame)} GENERATED impressions, click-through rate {frame['clicked'].mean():.1%}")


if __name__ == "__main__":
    main()
