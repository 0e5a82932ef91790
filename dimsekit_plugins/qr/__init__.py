"""Query/Retrieve and Modality Worklist: C-FIND matching, C-GET, C-MOVE over the archive."""
