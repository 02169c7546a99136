"""Warehouse-first recommendation system for online shops."""

__version__ = "0.1.0"
