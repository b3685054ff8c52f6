"""Data: the `LabelledImages` table, readers of real dataset formats, the Scenes benchmark, torch datasets."""
