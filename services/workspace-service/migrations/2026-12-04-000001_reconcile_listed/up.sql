-- A workspace or membership a run listed although it is held outside the stretch of the page
-- that listed it (held with another `created_at` than Clerk's, or listed out of order):
-- marked, so the page whose stretch holds it does not count it as a deletion candidate,
-- whichever page is compared first.
ALTER TABLE reconcile_candidates ADD COLUMN listed boolean NOT NULL DEFAULT false;
