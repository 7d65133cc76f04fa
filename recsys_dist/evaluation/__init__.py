"""evaluation stage of recsys_dist."""
