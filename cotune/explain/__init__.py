"""`cotune explain`: which inputs a trained model relies on. core.py (the rows, the files, explain()),
permutation.py (tables: permutation importance per original column), gradients.py (sequences and images:
integrated gradients through captum)."""
