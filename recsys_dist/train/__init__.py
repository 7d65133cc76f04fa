"""train stage of recsys_dist."""
