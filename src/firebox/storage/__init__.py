"""Blob storage for uploaded files (datasets, model weights), behind one small interface."""
