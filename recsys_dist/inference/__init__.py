"""inference stage of recsys_dist."""
