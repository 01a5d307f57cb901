"""Live updates over WebSocket: prices, predictions and the caller's own alerts, with heartbeats."""
