"""Dramatiq side of the product: the job actor, its middleware stack and maintenance."""
