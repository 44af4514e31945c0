"""The chaos soak, as long as you like: the engine of tests/test_soak.py with a longer schedule.

A real `bench-runner daemon` measures simulated models and delivers to the ingest app
under gunicorn on nx-27017, while a seeded schedule SIGKILLs and restarts the database,
the gunicorn master, a gunicorn worker and the runner, and SIGSTOPs the database. Then
everything recovers and drains, and every record id the outbox ever held must be stored
exactly once, with nothing in dead/ and nothing pending. Prints the seed and the counts
in one line; exits 1 if the promise broke (the logs are kept then, and the path printed).

    python bench/chaos_soak.py [--seconds 600] [--seed N] [--mean-gap 2.0]

The seed comes from --seed, else SOAK_SEED, else a fresh random one; rerun with the
printed seed to replay the same faults at the same offsets.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.soak import SoakConfig, plan_faults, run_soak, seed_from_env  # noqa: E402


def main() -> int:
    """Run one soak and print its line; 0 when the promise held."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="length of the chaos phase (default 600)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the fault schedule (default: SOAK_SEED, else random)")
    parser.add_argument("--mean-gap", type=float, default=2.0,
                        help="mean seconds between two faults (default 2.0)")
    parser.add_argument("--models", type=int, default=4,
                        help="simulated models that answer; one failing model is added")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--interval-minutes", type=float, default=0.02,
                        help="the daemon's cycle interval (default 0.02: 1.2 s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where data and logs go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = parser.parse_args()

    seed = args.seed if args.seed is not None else seed_from_env()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = SoakConfig(seed=seed, workdir=workdir, seconds=args.seconds,
                        mean_gap=args.mean_gap, models=args.models,
                        concurrency=args.concurrency, interval_minutes=args.interval_minutes)
    planned = Counter(f.kind for f in plan_faults(seed, args.seconds, args.mean_gap))
    print(f"soak seed={seed}: {sum(planned.values())} faults planned over {args.seconds:.0f} s "
          f"({', '.join(f'{k}={n}' for k, n in sorted(planned.items()))})", flush=True)
    report = run_soak(config)
    print(report.details())
    if report.ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and data: {workdir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
