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
    configure_logging(get_settings().log_level, process="worker")
    args = cli.make_argument_parser().parse_args([*sys.argv[1:], "--skip-logging"])
    return int(cli.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
