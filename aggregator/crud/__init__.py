"""Database operations with keyword-only arguments. They flush but never commit: callers do."""
