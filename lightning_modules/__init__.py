"""lightning_modules package."""
