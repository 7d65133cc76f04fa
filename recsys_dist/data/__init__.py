"""data stage of recsys_dist."""
