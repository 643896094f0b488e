"""Summarise an orders CSV: total revenue per customer."""

import csv
import sys
from collections import defaultdict


def load(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def revenue_by_customer(rows):
    totals = defaultdict(float)
    for row in rows:
        quantity = int(row["quantity"])
        totals[row["customer"]] += quantity * float(row["unit_price"])
    return dict(totals)


def main(path):
    for customer, total in sorted(revenue_by_customer(load(path)).items()):
        print(f"{customer}: {total:.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
