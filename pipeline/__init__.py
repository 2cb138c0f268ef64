"""Data plumbing shared by the jobs: reading input rows, the output row layout, and (next) the Ray Data graph."""
