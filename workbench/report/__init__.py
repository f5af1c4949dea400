"""Readers only: store -> DataFrame -> markdown and PNG pages."""
