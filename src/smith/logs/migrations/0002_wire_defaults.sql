-- smith: modern only
-- Lets a modern server take lines in their wire shape (smith.logs.ingest.Line): ts, seconds as a float, goes
-- into an EPHEMERAL column that ts_us and day are computed from, and fields a line leaves out take their
-- defaults. The pipeline then sends each line once, as the agent shaped it, with no per-line work in Python.
-- Legacy servers have no EPHEMERAL columns: they skip this file (it is applied once they are upgraded) and the
-- pipeline sends them every stored column.
ALTER TABLE ${db}.log_lines${on_cluster} ADD COLUMN IF NOT EXISTS ts Float64 EPHEMERAL;
ALTER TABLE ${db}.log_lines${on_cluster} MODIFY COLUMN ts_us DEFAULT toInt64(round(ts * 1000000));
ALTER TABLE ${db}.log_lines${on_cluster} MODIFY COLUMN day DEFAULT toDate(fromUnixTimestamp64Micro(ts_us, 'UTC'));
ALTER TABLE ${db}.log_lines${on_cluster} MODIFY COLUMN stream DEFAULT 'stdout';
-- Time-range searches (--since/--until) skip granules by the lines' timestamps.
ALTER TABLE ${db}.log_lines${on_cluster} ADD INDEX IF NOT EXISTS ts_range ts_us TYPE minmax GRANULARITY 1;
