"""The ``serve-ray`` subcommand: deploy (or remove) the shared inference tier on a Ray cluster
(main thread).

The flags map one to one onto :class:`~streamer.models.ray_tier.RayTierConfig` fields
(``--replicas N`` sets both ``--min-replicas`` and ``--max-replicas``). The command joins the
cluster at ``--address`` (``auto``: the one this machine belongs to, started with
``ray start --head``; ``ray://HOST:PORT`` through Ray Client), deploys, waits until the
replicas run, prints how engines reach the tier, and leaves: the tier stays on the cluster
(Serve applications outlive the driver that deployed them) until ``serve-ray --delete``.
Ray's own credential (its token) comes from Ray's environment or token file, never a flag.
``register_serve_ray`` imports nothing heavy; the handler imports Ray when it runs.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from server.errors import ServerError

__all__ = ["register_serve_ray"]

#: RayTierConfig field -> flag dest, for the flags that were given
_TIER_FLAGS = {
    "model": "model", "backend": "backend", "precision": "precision", "app_name": "app",
    "min_replicas": "min_replicas", "max_replicas": "max_replicas",
    "target_ongoing_requests": "target_ongoing_requests",
    "max_batch_windows": "max_batch_windows", "batch_wait_s": "batch_wait_s",
    "cpus_per_replica": "cpus_per_replica", "gpus_per_replica": "gpus_per_replica",
    "max_queued_requests": "max_queued_requests",
}


def register_serve_ray(subparsers: Any) -> None:
    """Add ``serve-ray`` to the top-level parser."""
    cmd = subparsers.add_parser(
        "serve-ray",
        help="deploy the shared, batched inference tier on a Ray cluster (Ray Serve)",
        description=(
            "Deploy the emotion model as a Ray Serve application that batches windows of every "
            "stream of every 'run --inference ray:...' engine, then exit (the tier stays on "
            "the cluster). Needs emotion-monitor[ray] on this machine and on every node."
        ),
    )
    cmd.add_argument("--address", default="auto",
                     help="the Ray cluster: auto (the one this machine belongs to), HOST:PORT "
                     "(its GCS) or ray://HOST:PORT (Ray Client) (default: auto)")
    cmd.add_argument("--app", default=None,
                     help="Serve application name (default: emotion-monitor)")
    cmd.add_argument("--delete", action="store_true",
                     help="remove the tier's application instead of deploying it")
    model = cmd.add_argument_group("model (loaded once per replica)")
    model.add_argument("--model", default=None,
                       help="model folder or hub id, readable on every node (default: the "
                       "bundled model)")
    model.add_argument("--backend", choices=["auto", "torch", "onnx"], default=None,
                       help="inference backend, as for 'run' (default: auto)")
    model.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default=None,
                       help="precision, as for 'run' (default: auto)")
    scale = cmd.add_argument_group("replicas, batching and resources")
    scale.add_argument("--replicas", type=int, default=None,
                       help="a fixed number of replicas (default: 1)")
    scale.add_argument("--min-replicas", type=int, default=None,
                       help="autoscale from this many replicas (with --max-replicas; "
                       "default: 1)")
    scale.add_argument("--max-replicas", type=int, default=None,
                       help="autoscale up to this many replicas, by queue length")
    scale.add_argument("--target-ongoing-requests", type=float, default=None,
                       help="autoscaling aim: requests per replica, running plus queued "
                       "(default: 2)")
    scale.add_argument("--max-batch-windows", type=int, default=None,
                       help="most windows per model call on a replica, from all callers "
                       "(default: 32)")
    scale.add_argument("--batch-wait-s", type=float, default=None,
                       help="longest wait for more windows once one request is there "
                       "(default: 0.005)")
    scale.add_argument("--cpus-per-replica", type=float, default=None,
                       help="CPUs reserved per replica, also its model's threads (default: 1)")
    scale.add_argument("--gpus-per-replica", type=float, default=None,
                       help="GPUs per replica; > 0 runs the model on CUDA (default: 0)")
    scale.add_argument("--max-queued-requests", type=int, default=None,
                       help="requests one caller may queue for the replicas before more are "
                       "refused (default: 256)")
    cmd.set_defaults(handler=_serve_ray)


def _tier_config(args: argparse.Namespace) -> Any:
    from streamer.models.ray_tier import RayTierConfig

    low, high = args.min_replicas, args.max_replicas
    if args.replicas is not None:
        if low is not None or high is not None:
            raise ServerError("use --replicas or --min-replicas/--max-replicas, not both")
        low = high = args.replicas
    elif low is not None and high is None:
        raise ServerError("--min-replicas needs --max-replicas (or use --replicas)")
    elif high is not None and low is None:
        low = 1
    flags = {**vars(args), "min_replicas": low, "max_replicas": high}
    given = {field: flags[dest] for field, dest in _TIER_FLAGS.items()
             if flags[dest] is not None}
    try:
        return RayTierConfig(**given)
    except ValueError as exc:
        raise ServerError(str(exc)) from exc


def _serve_ray(args: argparse.Namespace) -> int:
    from streamer.extras import RAY_EXTRA, import_extra
    from streamer.models.ray_tier import DEFAULT_TIER_APP, delete_tier, deploy_tier

    config = None if args.delete else _tier_config(args)
    ray = import_extra("ray", purpose="serve-ray", extra=RAY_EXTRA)
    joined = not ray.is_initialized()  # a process already connected (a test) keeps its link
    if joined:
        try:
            ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ServerError(f"cannot reach the Ray cluster at {args.address!r} (start one "
                              f"with 'ray start --head'): {str(exc).strip().splitlines()[0]}"
                              ) from exc
    try:
        if config is None:
            app = args.app or DEFAULT_TIER_APP
            delete_tier(app)
            print(f"tier {app}: deleted")
            return 0
        info = deploy_tier(config).describe.remote().result(timeout_s=60.0)
        replicas = (str(config.min_replicas) if config.min_replicas == config.max_replicas
                    else f"{config.min_replicas}..{config.max_replicas} (autoscaled)")
        print(f"tier {config.app_name}: {replicas} replica(s) of model {info.name} on "
              f"{info.device}, up to {config.max_batch_windows} window(s) per call")
        target = "ray:auto" if args.address == "auto" else (
            args.address if args.address.startswith("ray://") else f"ray:{args.address}")
        app_flag = "" if config.app_name == DEFAULT_TIER_APP else f" --ray-app {config.app_name}"
        print(f"engines:   emotion-monitor run --inference {target}{app_flag} ...")
        return 0
    finally:
        if joined:
            ray.shutdown()
