-- Evidence waiting at an edge to be shipped, as the edge last reported it.
ALTER TABLE edges ADD COLUMN buffered_sessions BIGINT;
ALTER TABLE edges ADD COLUMN buffered_bytes BIGINT;
