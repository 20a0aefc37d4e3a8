"""Spark over the lake: SQL views, the Python data source, the DataFrame writer, example queries."""
from stlake.sql.views import read_table, register_views, run_sql, table_route

__all__ = ["read_table", "register_views", "run_sql", "table_route"]
