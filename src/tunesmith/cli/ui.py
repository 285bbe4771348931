"""`tunesmith ui [--runs-dir runs] [--port 7860] [--host 127.0.0.1] [--token T]`: watch and steer runs in a browser."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    from tunesmith.config import OutputConfig

    ui = subparsers.add_parser(
        "ui", help="a local web app: watch runs live, start/stop/resume training, compare, read reports, chat",
        description="Serves a page at http://HOST:PORT/ over the run folders in --runs-dir, offering the data files "
                    "under the current folder. Training runs as `tunesmith train CONFIG` in processes of their own "
                    "(they keep going when the UI stops).")
    ui.add_argument("--runs-dir", default=OutputConfig.model_fields["runs_dir"].default,
                    help="folder holding the run folders (default: %(default)s)")
    ui.add_argument("--port", type=int, default=7860, help="TCP port (default: %(default)s)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: %(default)s, this machine only; another one needs --token)")
    ui.add_argument("--token", default=os.environ.get("TUNESMITH_UI_TOKEN"),
                    help="require this token on every request (default: $TUNESMITH_UI_TOKEN; none = open)")
    ui.set_defaults(handler=_ui)


def _ui(args: argparse.Namespace) -> int:
    import uvicorn

    from tunesmith.errors import ConfigError
    from tunesmith.ui.app import LOOPBACK_HOSTS, create_app

    loopback = args.host in LOOPBACK_HOSTS
    if not loopback and not args.token:
        raise ConfigError(f"--host {args.host}: other machines could start training here; "
                          f"set --token (or $TUNESMITH_UI_TOKEN) to listen beyond this machine")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be between 1 and 65535")
    # listening beyond loopback, the Host header names this machine however it is reached: the token guards it
    app = create_app(args.runs_dir, os.getcwd(), args.token, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    query = f"?token={args.token}" if args.token else ""
    print(f"tunesmith ui: http://{shown}:{args.port}/{query}  (runs: {args.runs_dir}; Ctrl-C stops the UI, "
          f"not the training)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
