"""SQL, one module per table or aggregate, functions named for the action.

Routes, actors and maintenance never build queries: they call these functions.
Lock order everywhere: job rows (by id) -> leases -> the pool row, which is always the
last lock a transaction takes; admission then reads candidates with SKIP LOCKED.
"""
