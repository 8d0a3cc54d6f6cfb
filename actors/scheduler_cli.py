"""Entry point of the scheduler command: `python -m actors.scheduler_cli actors.scheduler`.

periodiq's own entry point configures plain-text logging before it imports anything;
this one configures the product's JSON lines first and then runs periodiq's main.
"""

from __future__ import annotations

import sys

import periodiq

from queue_service.logging import configure_logging
from queue_service.settings import get_settings


def main() -> int:
    configure_logging(get_settings().log_level, process="scheduler")
    args = periodiq.make_argument_parser().parse_args(sys.argv[1:])
    return int(periodiq.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
