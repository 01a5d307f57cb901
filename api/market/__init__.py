"""Market data: tracked coins, latest prices, history and trending tokens."""
