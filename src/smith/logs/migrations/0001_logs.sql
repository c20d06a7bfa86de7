-- The log lines of every job. One row per line; (job_id, seq) is a line's identity.
-- Ordered by (job_id, seq) so a job's page or tail is one range read; partitioned by day so retention drops
-- whole partitions. ReplacingMergeTree folds any duplicate (job_id, seq) that slipped past the service's own
-- check (two writers) when parts merge.
-- ${...} are filled per dialect: modern servers get LowCardinality columns, an n-gram bloom-filter index on
-- lower(line) for text search and a TTL; legacy servers (18.16) get plain columns and a retention sweep.
CREATE TABLE IF NOT EXISTS ${db}.log_lines${on_cluster}
(
    job_id      String,
    seq         UInt64,
    ts_us       Int64,
    day         Date,
    stream      ${lc_string},
    host        ${lc_string},
    vm          String,
    step        ${lc_string},
    repo        ${lc_string},
    line        String,
    truncated   UInt8,
    last        UInt8
    ${line_index}
)
ENGINE = ${replacing_merge_tree}
PARTITION BY toYYYYMMDD(day)
ORDER BY (job_id, seq)
${ttl}
SETTINGS index_granularity = 8192;
