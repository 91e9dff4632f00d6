"""`herd run`: the whole recipe as one resumable job, with lineage and a report."""
