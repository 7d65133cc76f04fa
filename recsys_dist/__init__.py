"""recsys_dist: sequential recommendation that follows how users' interests evolve, on Ray."""

__version__ = "0.1.0"
