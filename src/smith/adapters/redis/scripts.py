"""Lua scripts: every state change of a job is one atomic script, never a read-then-write from Python.

Job records are hashes (see keys.py). Field ``entry`` holds the id of the job's current stream entry, so a
stale entry (a job re-queued, cancelled or finished meanwhile) is recognised and dropped, by the script itself.

Every script that changes state is ``replayable`` (replay.py): its last key is a reply key unique to the call, so
a call redis-py resends after a timeout returns the first run's answer. RENEW needs no wrapper: run twice, it
does and answers the same.
"""

from smith.adapters.redis.replay import replayable

# Record a webhook delivery once; for a job to queue, create its record and add it to its class stream.
# KEYS: delivery, job, stream, jobs-zset, events-stream, reply
# ARGV: delivery_ttl, now, outcome_json, event_json, events_maxlen, enqueue(0|1), job_id, jobs_cutoff,
#       jobs_max, fields_json ([field, value, ...]), unfinished_ttl
# A queued job also trims the listing: records older than jobs_cutoff, and past the newest jobs_max. Its record
# expires after unfinished_ttl even if it never finishes (a final state sets the shorter retention TTL).
RECORD_QUEUED = replayable("""
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[1]) then
  return {'duplicate', redis.call('GET', KEYS[1]) or ''}
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
if ARGV[6] ~= '1' then return {'recorded', ''} end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'known', redis.call('HGET', KEYS[2], 'state') or ''}
end
local entry = redis.call('XADD', KEYS[3], '*', 'job', ARGV[7])
redis.call('HSET', KEYS[2], 'entry', entry, 'state', 'queued', 'created_at', ARGV[2], 'updated_at', ARGV[2],
  unpack(cjson.decode(ARGV[10])))
redis.call('EXPIRE', KEYS[2], ARGV[11])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[8])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[9]) + 1))
return {'queued', entry}
""")

# GitHub says a job is in progress / completed / waiting. A completed (or cancelled) job that is still queued
# here leaves the queue. Unknown jobs get a short tombstone so a late 'queued' delivery does not enqueue them.
# KEYS: delivery, job, stream, jobs-zset, events-stream, reply
# ARGV: delivery_ttl, now, outcome_json, event_json, events_maxlen, action, conclusion, job_id, retention,
#       tombstone_fields_json (used only when the job is unknown and the action is 'completed'),
#       dequeue ('1': a still-queued job leaves the queue), dequeue_reason
RECORD_UPDATE = replayable("""
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[1]) then
  return {'duplicate', redis.call('GET', KEYS[1]) or ''}
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
local action = ARGV[6]
local state = redis.call('HGET', KEYS[2], 'state')
if not state then
  if action == 'completed' and ARGV[10] ~= '' then
    local f = cjson.decode(ARGV[10])
    for k, v in pairs(f) do redis.call('HSET', KEYS[2], k, v) end
    redis.call('HSET', KEYS[2], 'state', 'cancelled', 'github_status', 'completed',
      'github_conclusion', ARGV[7], 'reason', 'completed on GitHub before Smith queued it',
      'created_at', ARGV[2], 'updated_at', ARGV[2], 'finished_at', ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[9])
    return {'tombstone', ''}
  end
  return {'unknown', ''}
end
redis.call('HSET', KEYS[2], 'github_status', action, 'updated_at', ARGV[2])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'github_conclusion', ARGV[7]) end
if ARGV[11] == '1' and state == 'queued' then
  local entry = redis.call('HGET', KEYS[2], 'entry')
  if entry then
    redis.call('XACK', KEYS[3], 'smith-agents', entry)
    redis.call('XDEL', KEYS[3], entry)
  end
  redis.call('HSET', KEYS[2], 'state', 'cancelled', 'finished_at', ARGV[2],
    'reason', ARGV[12])
  redis.call('HDEL', KEYS[2], 'entry')
  redis.call('EXPIRE', KEYS[2], ARGV[9])
  return {'dequeued', state}
end
return {'updated', state}
""")

# An agent read a stream entry; make it the job's lease if the entry is still the job's current one.
# KEYS: job, stream, reply   ARGV: entry, agent_id, now
# Returns the job's fields (flat list), or {} when the entry is stale: then the entry leaves the stream here.
CLAIM = replayable("""
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'agent_id')
if f[1] == 'assigned' and f[2] == ARGV[1] and f[3] == ARGV[2] then return redis.call('HGETALL', KEYS[1]) end
if f[1] ~= 'queued' or f[2] ~= ARGV[1] then
  redis.call('XACK', KEYS[2], 'smith-agents', ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return {}
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'assigned', 'agent_id', ARGV[2], 'assigned_at', ARGV[3],
  'updated_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'started_at')
return redis.call('HGETALL', KEYS[1])
""")

# Put a job's entry back at the end of its stream: a lease that expired (count it) or an entry an agent
# read but did not take (do not count it). Fails the job once it has used max_attempts leases.
# KEYS: job, stream, reply   ARGV: entry, now, max_attempts, reason, retention
REQUEUE = replayable("""
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'attempts')
if f[2] ~= ARGV[1] or (f[1] ~= 'queued' and f[1] ~= 'assigned' and f[1] ~= 'running') then
  redis.call('XACK', KEYS[2], 'smith-agents', ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return {'stale', f[1] or ''}
end
redis.call('XACK', KEYS[2], 'smith-agents', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
if tonumber(f[3] or '0') >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', ARGV[2], 'updated_at', ARGV[2],
    'reason', ARGV[4] .. '; gave up after ' .. (f[3] or '0') .. ' attempts')
  redis.call('HDEL', KEYS[1], 'entry')
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return {'failed', f[1]}
end
local job_id = redis.call('HGET', KEYS[1], 'id')
local entry = redis.call('XADD', KEYS[2], '*', 'job', job_id)
redis.call('HSET', KEYS[1], 'state', 'queued', 'entry', entry, 'updated_at', ARGV[2], 'reason', ARGV[4])
redis.call('HDEL', KEYS[1], 'agent_id', 'assigned_at', 'started_at')
return {'requeued', f[1]}
""")

# Same as REQUEUE for an entry an agent read but handed back unused: no attempt is counted.
# KEYS: job, stream, reply   ARGV: entry, now
HANDBACK = replayable("""
local f = redis.call('HMGET', KEYS[1], 'state', 'entry')
redis.call('XACK', KEYS[2], 'smith-agents', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
if f[1] ~= 'queued' or f[2] ~= ARGV[1] then return 0 end
local job_id = redis.call('HGET', KEYS[1], 'id')
local entry = redis.call('XADD', KEYS[2], '*', 'job', job_id)
redis.call('HSET', KEYS[1], 'entry', entry, 'updated_at', ARGV[2])
return 1
""")

# Forget an agent's consumer: only if it holds no entry and its host record has expired.
# KEYS: stream, host   ARGV: consumer.  Returns 1 if deleted. Run twice, it answers 0 the second time: harmless.
DROP_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], 'smith-agents', '-', '+', 1, ARGV[1]) > 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'smith-agents', ARGV[1])
return 1
"""

# Heartbeat for one job: renew the lease (reset the entry's idle time) if this agent still holds it.
# KEYS: job, stream   ARGV: agent_id, now
# Returns: 'ok' | 'cancel' (operator asked to cancel) | 'lost' (the lease is no longer this agent's)
RENEW = """
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'agent_id', 'cancel_requested')
if f[3] ~= ARGV[1] or (f[1] ~= 'assigned' and f[1] ~= 'running') or not f[2] then return 'lost' end
redis.call('XCLAIM', KEYS[2], 'smith-agents', ARGV[1], 0, f[2], 'JUSTID')
if f[4] == '1' then return 'cancel' end
return 'ok'
"""

# An agent reports a job's state. Only the agent holding the lease may; only allowed transitions happen.
# KEYS: job, stream, reply   ARGV: agent_id, new_state, now, reason, exit_code, retention
REPORT = replayable("""
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'agent_id')
if not f[1] then return {'missing', ''} end
if f[3] ~= ARGV[1] then return {'not_owner', f[1]} end
local s, n = f[1], ARGV[2]
local ok = (s == 'assigned' and (n == 'running' or n == 'succeeded' or n == 'failed' or n == 'cancelled'))
  or (s == 'running' and (n == 'running' or n == 'succeeded' or n == 'failed' or n == 'cancelled'))
if not ok then return {'bad_transition', s} end
redis.call('HSET', KEYS[1], 'state', n, 'updated_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'exit_code', ARGV[5]) end
if n == 'running' then
  if s ~= 'running' then redis.call('HSET', KEYS[1], 'started_at', ARGV[3]) end
  if f[2] then redis.call('XCLAIM', KEYS[2], 'smith-agents', ARGV[1], 0, f[2], 'JUSTID') end
  return {'ok', s}
end
if f[2] then
  redis.call('XACK', KEYS[2], 'smith-agents', f[2])
  redis.call('XDEL', KEYS[2], f[2])
end
redis.call('HDEL', KEYS[1], 'entry')
redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {'ok', s}
""")

# The agent holding the lease says GitHub's runner exited without running any job (it never started, or got
# none): the job goes back to the end of its queue WITHOUT counting the attempt (the lease's HINCRBY is undone).
# ``releases`` counts these; past max_releases the job fails (an image whose runner never starts must not loop).
# KEYS: job, stream, reply   ARGV: agent_id, now, max_releases, reason, retention
RELEASE_UNUSED = replayable("""
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'agent_id', 'attempts', 'releases')
if not f[1] then return {'missing', ''} end
if f[3] ~= ARGV[1] then return {'not_owner', f[1]} end
if f[1] ~= 'assigned' and f[1] ~= 'running' then return {'bad_transition', f[1]} end
if f[2] then
  redis.call('XACK', KEYS[2], 'smith-agents', f[2])
  redis.call('XDEL', KEYS[2], f[2])
end
local releases = tonumber(f[5] or '0') + 1
local attempts = math.max(tonumber(f[4] or '0') - 1, 0)
redis.call('HDEL', KEYS[1], 'entry', 'agent_id', 'assigned_at', 'started_at')
if releases > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'releases', releases, 'attempts', attempts, 'finished_at', ARGV[2],
    'updated_at', ARGV[2], 'reason', ARGV[4] .. '; ' .. releases .. ' runners in a row ran no job')
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return {'failed', f[1]}
end
local job_id = redis.call('HGET', KEYS[1], 'id')
local entry = redis.call('XADD', KEYS[2], '*', 'job', job_id)
redis.call('HSET', KEYS[1], 'state', 'queued', 'entry', entry, 'attempts', attempts, 'releases', releases,
  'updated_at', ARGV[2], 'reason', ARGV[4])
return {'requeued', f[1]}
""")

# Operator cancel. A queued job leaves the queue at once; a leased one is flagged for its agent.
# KEYS: job, stream, reply   ARGV: now, reason, retention
CANCEL = replayable("""
local f = redis.call('HMGET', KEYS[1], 'state', 'entry')
if not f[1] then return {'missing', ''} end
if f[1] == 'queued' then
  if f[2] then
    redis.call('XACK', KEYS[2], 'smith-agents', f[2])
    redis.call('XDEL', KEYS[2], f[2])
  end
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'reason', ARGV[2], 'finished_at', ARGV[1],
    'updated_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'entry')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {'cancelled', f[1]}
end
if f[1] == 'assigned' or f[1] == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'reason', ARGV[2], 'updated_at', ARGV[1])
  return {'cancel_requested', f[1]}
end
return {'final', f[1]}
""")
