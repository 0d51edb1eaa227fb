"""Store: sqlmodel tables, the group-commit writer, repositories. SQLite by default, PostgreSQL for several nodes."""
