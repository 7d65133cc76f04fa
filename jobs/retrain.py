"""The retraining job: one turn of the loop, for a scheduler to run unattended.

Every turn appends the event files not taken before, trains a candidate warm-started from
the registry's current version, gates it against current on the same held-out events, and
registers it, promoting it only if it passed. It prints one JSON line (the ``retrain``
command's result) and exits 0 whether or not the candidate was promoted: a refusal is the
gate working; 2 is bad input, 1 a failure (see docs/retraining.md).

Locally, or from cron against a cluster (the registry, event log and work directory must be
on storage every node reaches: ``s3://`` or a shared mount)::

    python jobs/retrain.py --registry s3://ml/registry --events s3://ml/event_log
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/retrain.py --registry s3://ml/registry --events s3://ml/event_log

On Kubernetes, ``cluster/kuberay-retrain-cronjob.yaml`` creates a RayJob on a schedule that
runs the same turn (``recsys-dist retrain``) on a cluster of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from recsys_dist import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """``recsys-dist retrain ARGS --json``: the same flags, one JSON line for the job's log."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(flag in argv for flag in ("-h", "--help")):
        print(__doc__)
    return cli.main(["retrain", *argv, *([] if "--json" in argv else ["--json"])])


if __name__ == "__main__":
    sys.exit(main())
