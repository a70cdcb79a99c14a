"""`vitkit explore`: serve a page that shows what a checkpoint attends to, on the user's images."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from vitkit.cli.options import add_data_flags, data_spec
from vitkit.errors import ConfigError

DEFAULT_PORT = 8765


def register(sub, parent) -> None:
    p = sub.add_parser("explore", parents=[parent], help="see what a ViT attends to, in the browser",
                       description="Load the model once and serve a local web page: upload or drop an image "
                                   "(or pick a sample of --data) to see its top classes, attention rollout, "
                                   "where each patch attends per layer and head, and the checkpoint's mean "
                                   "attention distance, position-embedding similarity and patch-embedding "
                                   "filters. Scripts POST images to /api/predict (docs/explore.md).")
    p.add_argument("checkpoint", help="model file (any format vitkit loads)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split of --data whose samples the page offers, with their true labels (default test)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-batch", type=int, default=8,
                   help="requests that pile up are run in one forward pass, at most this many (default 8)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload taken, in MiB (default 32)")
    add_data_flags(p)
    p.set_defaults(func=run)


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def run(args) -> int:
    from vitkit.data import load_data
    from vitkit.device import pick_device
    from vitkit.explore import Explorer, ExploreServer
    from vitkit.formats import load

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be positive, got {args.max_batch}")
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    device = pick_device(args.device)
    model = load(args.checkpoint).to(device)
    spec = data_spec(args)
    samples = classes = source = None
    if hasattr(args, "data_source"):  # samples only from data the user names
        splits = load_data(spec, quiet=args.quiet)
        samples, classes = splits.split(args.split), splits.class_names
        source = f"{spec.source} ({args.split} split)"
    explorer = Explorer(model, name=Path(args.checkpoint).name, samples=samples, sample_classes=classes,
                        sample_source=source, max_batch=args.max_batch,
                        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                        max_image_pixels=spec.max_image_pixels)
    try:
        server = ExploreServer(explorer, args.host, args.port, debug=args.debug)
    except OSError as e:
        explorer.close()
        hint = "; pass --port 0 for a free one" if args.port else ""
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}{hint}") from None
    cfg = model.config
    if not args.quiet:
        print(f"vitkit explore: {args.checkpoint} ({cfg.depth} layers, {cfg.num_heads} heads, "
              f"grid {cfg.grid_size[0]}x{cfg.grid_size[1]}) on {device}"
              + (f"; {len(samples)} samples of {source}" if samples is not None else ""))
    print(server.address, flush=True)
    if not server.loopback_only:
        print(f"Listening on {args.host}: anyone who can reach this machine on port {server.server_port} can use "
              "the page.", flush=True)
    if not args.quiet:
        print("Open that address in a browser; Ctrl-C stops the server.", flush=True)
    # SIGTERM (a service manager's stop) ends it as Ctrl-C does; handlers live in the main thread.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if in_main_thread else None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        if not args.quiet:
            print("stopped", file=sys.stderr)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()
        explorer.close()
    return 0
