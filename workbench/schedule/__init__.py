"""Cells and trials over worker processes: the queues, the worker loop, the launcher, one cell's execution."""
