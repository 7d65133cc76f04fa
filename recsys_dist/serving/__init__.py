"""serving stage of recsys_dist: the online service, its store and its event log."""
