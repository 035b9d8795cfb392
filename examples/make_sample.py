"""Write the bundled demo sample: 2,000 billing rows whose times fall in the last 3 days.

Everything but the timestamps is fixed (seeded), so the transaction_ids (keyed on
invoice_line_id) are the same on every machine and every day; the times are re-stamped
relative to now so the sample always sits inside Moesif's 30-day window.

    python examples/make_sample.py --out .demo/payments.csv [--rows 2000]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import random
from pathlib import Path

CUSTOMERS = [f"cus_{i:04d}" for i in range(1, 41)]
PLANS = ["starter", "growth", "enterprise"]


def rows(n: int, now: dt.datetime) -> list[dict[str, str]]:
    rng = random.Random(20261128)
    out = []
    for i in range(1, n + 1):
        cust = rng.choice(CUSTOMERS)
        created = now - dt.timedelta(seconds=rng.randint(60, 3 * 86_400))
        out.append(
            {
                "invoice_line_id": f"il_{i:06d}",
                "customer_id": cust,
                "user_id": f"user_{rng.randint(1, 400):04d}" if rng.random() < 0.9 else "",
                "sub_id": f"sub_{cust[4:]}",
                "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "amount": f"{rng.randint(100, 500_000) / 100:.2f}",
                "currency": rng.choice(["USD", "USD", "EUR", "GBP"]),
                "plan": rng.choice(PLANS),
                "quantity": str(rng.randint(1, 50)),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    data = rows(args.rows, now)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)


if __name__ == "__main__":
    main()
