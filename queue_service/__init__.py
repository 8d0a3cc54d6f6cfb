"""Smart Task Queue domain: job model, scheduling, storage and broker setup."""
