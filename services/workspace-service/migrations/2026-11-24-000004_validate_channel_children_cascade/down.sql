-- Nothing to undo: a validated constraint is the same constraint.
SELECT 1;
