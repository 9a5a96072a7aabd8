"""Reports: tables and figures built from the metrics files that runs and evaluations write."""

from fedgin.reports.tables import comparison_table, read_summary

__all__ = ["comparison_table", "read_summary"]
