"""Built-in sample data (placeholder during development)."""
