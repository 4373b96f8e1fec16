"""Heads and necks (classification head, simple pyramid neck)."""
