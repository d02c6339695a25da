"""End-to-end flows built from caffelite's commands (the flagship segmentation pipeline)."""
