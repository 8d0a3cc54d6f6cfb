"""Entry point of the worker processes: `dramatiq actors.worker`."""

from actors.app import setup

broker = setup("worker")
