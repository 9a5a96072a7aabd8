"""Reports: tables and figures built from the metrics files that runs and evaluations write."""

from fedgin.reports.curves import plot_learning_curve
from fedgin.reports.tables import comparison_table, read_summary

__all__ = ["comparison_table", "plot_learning_curve", "read_summary"]
