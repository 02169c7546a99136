"""The HTTP service over DuckDB snapshots (see DESIGN.md, "HTTP")."""
