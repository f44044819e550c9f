-- Nothing to undo: the entries named their messages or lost bodies that were already gone.
SELECT 1;
