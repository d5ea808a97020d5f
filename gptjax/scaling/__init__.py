"""Model size families, sweeps over parameter counts and scaling-law reports."""
