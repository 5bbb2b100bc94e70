"""The Hub side of a run: data set and router cards, and publishing."""
