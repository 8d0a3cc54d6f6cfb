"""Entry point of the worker command: `python -m actors.cli actors.worker [dramatiq args]`.

The dramatiq CLI, with its log lines in the product's JSON format: the main process logs
through the handler configured here (`--skip-logging` keeps the CLI's plain-text
`basicConfig` away), and each worker process configures the same format when it imports
`actors.worker`.
"""

from __future__ import annotations

import sys

from dramatiq import cli

from queue_service.logging import configure_logging
from queue_service.settings import get_settings


def main() -> int:
    settings = get_settings()
    configure_logging(settings.log_level, process="worker")
    argv = [*sys.argv[1:], "--skip-logging"]
    if "--worker-shutdown-timeout" not in argv:
        # SIGTERM: running attempts get TASKQ_SHUTDOWN_GRACE_SECONDS to finish (then the
        # GracefulShutdown middleware gives the rest back).
        grace_ms = str(int(settings.shutdown_grace_seconds * 1000))
        argv += ["--worker-shutdown-timeout", grace_ms]
    args = cli.make_argument_parser().parse_args(argv)
    return int(cli.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
