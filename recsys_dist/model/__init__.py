"""model stage of recsys_dist."""
