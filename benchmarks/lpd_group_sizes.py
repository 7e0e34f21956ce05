"""How many of LPD's official group plans the rule of :mod:`anyorder.models.lpd.plans` reproduces.

Reads ``orders/group_sizes_lookup.json`` from a checkout of mit-han-lab/lpd (never copied here) and compares
every list with ``group_sizes(T, S)`` (the rule alone: without the stored release plans)::

    git clone https://github.com/mit-han-lab/lpd /tmp/official/mit-han-lab+lpd
    python benchmarks/lpd_group_sizes.py --official /tmp/official --json benchmarks/lpd_group_sizes.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anyorder.models.lpd import plans


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", default="/tmp/official", help="folder holding a checkout mit-han-lab+lpd")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    table = json.loads((Path(args.official) / "mit-han-lab+lpd" / "orders" / "group_sizes_lookup.json").read_text())
    stored, plans.RELEASE_PLANS = dict(plans.RELEASE_PLANS), {}  # the rule alone
    rows = []
    for res, lists in table.items():
        for key, official in lists.items():
            total, steps = sum(official), len(official)
            ours = plans.group_sizes(total, steps)
            moved = sum(abs(a - b) for a, b in zip(ours, official)) // 2
            rows.append({"tokens": total, "steps": steps, "equal": ours == official, "tokens_moved": moved,
                         "stored_release_plan": (total, steps) in stored})
            print(f"{res:15s} {key:10s} {'equal' if ours == official else f'differs ({moved} tokens moved)'}")
    n = sum(r["equal"] for r in rows)
    print(f"the rule reproduces {n} of {len(rows)} official plans")
    if args.json:
        Path(args.json).write_text(json.dumps({"reproduced": n, "of": len(rows), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
