"""SegOne bundle components."""
