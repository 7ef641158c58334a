"""What the loop's results become: the report, the exported package (and its template), training
datasets, audits of imported claims, end-to-end measurements of an exported package."""
