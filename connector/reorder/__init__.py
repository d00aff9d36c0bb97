"""Reorder windows: replenishment cycles and when each customer should hear about them."""
