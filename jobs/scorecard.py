"""``rnnjobs scorecard OUTPUT --histories URI``: the track record of published forecasts.

Every date with a LATEST pointer under OUTPUT: its run's forecasts joined with the prices that
arrived later (rnnlib.scorecard), written as by_date / by_date_step / by_ticker / points Parquet,
scorecard.png and report.md under ``--out`` (default ``OUTPUT/scorecard``). No Ray: the join is
one pandas pass over the forecasts and the histories.
"""

from __future__ import annotations

from rnnlib import scorecard, storage


def run(output: str, histories: str, out: str | None = None, endpoint_url: str | None = None,
        window: int = 20, min_points: int = 20) -> int:
    out = out or storage.join(output, "scorecard")
    card = scorecard.build(output, histories, endpoint_url)
    for note in card.history_notes:
        print(note)
    print("\n".join(scorecard.summary(card)))
    written = scorecard.write(card, out, endpoint_url, window=window, min_points=min_points)
    print("wrote: " + ", ".join(written))
    return 0
