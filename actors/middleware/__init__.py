"""One middleware per file, named for the policy it enforces."""
