"""logitstore.workers: the Ray precompute job (see ARCHITECTURE §4)."""
