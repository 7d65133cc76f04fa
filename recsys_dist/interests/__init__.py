"""How each user's interests move: profiles over time, drift, change points and forecasts."""
