-- Issue 12 (F10): the requester's own token `sub`, whatever claim the filter
-- maps the subject from, so the self-approval check compares identifiers
-- both sides read the same way. '' for approvals opened before.
ALTER TABLE approvals ADD COLUMN token_subject TEXT NOT NULL DEFAULT '';
