"""Child process: a Ray driver that kills one replica actor of the tier when told (SIGUSR1).

Run as ``python replica_killer.py ADDRESS APP TIMEOUT_S`` with the head's token auth in the
environment. Prints ``replicas: NAME ...`` once connected, then waits (at most TIMEOUT_S) for
SIGUSR1, kills the first replica with ``no_restart=True`` (as a crash of its process would,
Serve's controller then starts a new one) and prints ``killed: NAME``.
"""

from __future__ import annotations

import signal
import sys
import warnings

# blocked before Ray starts its threads, so that only sigtimedwait below receives it
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def main() -> int:
    address, app, timeout_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ray
    ray.init(address=address, log_to_driver=False)
    prefix = f"SERVE_REPLICA::{app}#"
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["name"].startswith(prefix))
    if not names:
        print(f"no replica of {app} on {address}", flush=True)
        return 1
    print("replicas: " + " ".join(names), flush=True)
    if signal.sigtimedwait({signal.SIGUSR1}, timeout_s) is None:
        return 1
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    print(f"killed: {names[0]}", flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
