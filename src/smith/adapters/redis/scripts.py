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

# GitHub's conclusion of a job as the state Smith records.
FINAL_OF = """
local function final_of(c)
  if c == 'success' or c == 'skipped' or c == 'neutral' then return 'succeeded' end
  if c == 'cancelled' then return 'cancelled' end
  return 'failed'
end
local function finish(job, state, now, reason, retention)
  redis.call('HSET', job, 'state', state, 'finished_at', now, 'updated_at', now, 'reason', reason)
  redis.call('HDEL', job, 'entry')
  redis.call('EXPIRE', job, retention)
end
"""

# GitHub says a job is in progress / completed / waiting. GitHub gives a queued job to ANY idle runner with its
# labels, so the runner it names may be one Smith minted for another job: the job GitHub ran is the one recorded
# (``github_runner``). A job still queued here that a Smith runner took leaves the queue and is 'running' with no
# lease of its own; such a job ends when GitHub says it completed. A completed (or cancelled) job still queued
# here, or one a runner that is not Smith's took, leaves the queue. Unknown jobs get a tombstone: a 'completed'
# one a cancelled record, an 'in_progress' one a running record, so that a late 'queued' does not enqueue them.
# When the runner was minted for ANOTHER job (KEYS[6], its stream KEYS[7]): that job learns its runner took
# something else ('runner_took'); if its lease already ended waiting for GitHub's word ('ran_runner'), its demand
# is open again: back to its queue, the attempt not counted.
# KEYS: delivery, job, stream, jobs-zset, events-stream, minted-for job, its stream, reply
# ARGV: delivery_ttl, now, outcome_json, event_json, events_maxlen, action, conclusion, job_id, retention,
#       tombstone_fields_json (used only when the job is unknown and the action is in_progress/completed),
#       dequeue ('1': a still-queued job leaves the queue), dequeue_reason, runner_name, smith_runner ('1'|'0'),
#       minted_for (that other job's id; '' when it is this job or unknown)
RECORD_UPDATE = replayable(
    FINAL_OF
    + """
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[1]) then
  return {'duplicate', redis.call('GET', KEYS[1]) or ''}
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
local action = ARGV[6]
if ARGV[15] ~= '' and (action == 'in_progress' or action == 'completed') then
  local m = redis.call('HMGET', KEYS[6], 'state', 'agent_id', 'ran_runner', 'github_runner', 'attempts')
  if (m[1] == 'assigned' or m[1] == 'running') and m[2] then
    redis.call('HSET', KEYS[6], 'runner_took', ARGV[8])
  elseif m[1] == 'running' and not m[2] and m[3] == ARGV[13] and m[4] ~= ARGV[13] then
    local entry = redis.call('XADD', KEYS[7], '*', 'job', ARGV[15])
    redis.call('HSET', KEYS[6], 'state', 'queued', 'entry', entry, 'updated_at', ARGV[2],
      'attempts', math.max(tonumber(m[5] or '0') - 1, 0),
      'reason', 'its runner ' .. ARGV[13] .. ' ran job ' .. ARGV[8] .. ' instead: queued again')
    redis.call('HDEL', KEYS[6], 'ran_runner', 'runner_took', 'started_at')
  end
end
local state = redis.call('HGET', KEYS[2], 'state')
if not state then
  if (action == 'completed' or action == 'in_progress') and ARGV[10] ~= '' then
    local f = cjson.decode(ARGV[10])
    for k, v in pairs(f) do redis.call('HSET', KEYS[2], k, v) end
    redis.call('HSET', KEYS[2], 'github_status', action, 'github_conclusion', ARGV[7], 'github_runner', ARGV[13],
      'created_at', ARGV[2], 'updated_at', ARGV[2])
    if action == 'completed' then
      redis.call('HSET', KEYS[2], 'state', 'cancelled', 'finished_at', ARGV[2],
        'reason', 'completed on GitHub before Smith queued it')
    else
      redis.call('HSET', KEYS[2], 'state', 'running', 'started_at', ARGV[2],
        'reason', 'in progress on GitHub (runner ' .. ARGV[13] .. ') before Smith queued it')
    end
    redis.call('EXPIRE', KEYS[2], ARGV[9])
    return {'tombstone', ''}
  end
  return {'unknown', ''}
end
-- Deliveries may arrive out of order: a late in_progress never undoes a completed.
if action == 'completed' or redis.call('HGET', KEYS[2], 'github_status') ~= 'completed' then
  redis.call('HSET', KEYS[2], 'github_status', action)
end
redis.call('HSET', KEYS[2], 'updated_at', ARGV[2])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'github_conclusion', ARGV[7]) end
if ARGV[13] ~= '' and (action == 'in_progress' or action == 'completed') then
  redis.call('HSET', KEYS[2], 'github_runner', ARGV[13])
end
local entry = redis.call('HGET', KEYS[2], 'entry')
if state == 'queued' and (ARGV[14] == '1' or ARGV[11] == '1') then
  if entry then
    redis.call('XACK', KEYS[3], 'smith-agents', entry)
    redis.call('XDEL', KEYS[3], entry)
  end
  redis.call('HDEL', KEYS[2], 'entry')
  if ARGV[14] == '1' and action == 'completed' then
    finish(KEYS[2], final_of(ARGV[7]), ARGV[2], 'GitHub ran it on Smith runner ' .. ARGV[13], ARGV[9])
  elseif ARGV[14] == '1' then
    redis.call('HSET', KEYS[2], 'state', 'running', 'started_at', ARGV[2],
      'reason', 'GitHub gave it to Smith runner ' .. ARGV[13])
    return {'dequeued', state}
  else
    finish(KEYS[2], 'cancelled', ARGV[2], ARGV[12], ARGV[9])
  end
  return {'dequeued', state}
end
if action == 'completed' and state == 'running' and not redis.call('HGET', KEYS[2], 'agent_id') then
  finish(KEYS[2], final_of(ARGV[7]), ARGV[2], 'GitHub: ' .. (ARGV[7] ~= '' and ARGV[7] or 'completed'), ARGV[9])
  return {'finished', state}
end
return {'updated', state}
"""
)

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
redis.call('HINCRBY', KEYS[1], 'leases', 1)
redis.call('HSET', KEYS[1], 'state', 'assigned', 'agent_id', ARGV[2], 'assigned_at', ARGV[3],
  'updated_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'started_at')
return redis.call('HGETALL', KEYS[1])
""")

# Put a job's entry back at the end of its stream: a lease that expired (count it) or an entry an agent
# read but did not take (do not count it). Fails the job once it has used max_attempts leases. GitHub's view
# wins: a job GitHub shows completed ends with its conclusion, one it shows in progress on a runner stays
# 'running' (no lease) until GitHub says it completed; neither is queued again.
# With uncounted = '1' (GitHub's API failed before a runner was made: not the job's fault) the lease's attempt
# is given back and the job never fails for it.
# KEYS: job, stream, reply   ARGV: entry, now, max_attempts, reason, retention, uncounted
REQUEUE = replayable(
    FINAL_OF
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'attempts', 'github_status', 'github_conclusion',
  'github_runner')
if f[2] ~= ARGV[1] or (f[1] ~= 'queued' and f[1] ~= 'assigned' and f[1] ~= 'running') then
  redis.call('XACK', KEYS[2], 'smith-agents', ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return {'stale', f[1] or ''}
end
redis.call('XACK', KEYS[2], 'smith-agents', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
if f[4] == 'completed' then
  finish(KEYS[1], final_of(f[5] or ''), ARGV[2], ARGV[4] .. '; GitHub: ' .. (f[5] or 'completed'), ARGV[5])
  return {'github', f[1]}
end
if f[4] == 'in_progress' and (f[6] or '') ~= '' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'updated_at', ARGV[2],
    'reason', ARGV[4] .. '; in progress on GitHub (runner ' .. f[6] .. ')')
  redis.call('HDEL', KEYS[1], 'entry', 'agent_id')
  return {'github', f[1]}
end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'attempts', math.max(tonumber(f[3] or '0') - 1, 0))
elseif tonumber(f[3] or '0') >= tonumber(ARGV[3]) then
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
"""
)

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
# Returns: 'ok' | 'cancel' (operator asked to cancel, or GitHub completed the job before a runner took it) |
# 'lost' (the lease is no longer this agent's)
RENEW = """
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'agent_id', 'cancel_requested', 'github_status',
  'github_runner')
if f[3] ~= ARGV[1] or (f[1] ~= 'assigned' and f[1] ~= 'running') or not f[2] then return 'lost' end
redis.call('XCLAIM', KEYS[2], 'smith-agents', ARGV[1], 0, f[2], 'JUSTID')
if f[4] == '1' then return 'cancel' end
-- GitHub completed (or cancelled) the job before any runner took it: its VM is of no use any more.
if f[5] == 'completed' and (f[6] or '') == '' then return 'cancel' end
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

# The final report of a GitHub runner job's lease. The VM's runner ran whatever job GitHub gave it, so what this
# lease's job became is GitHub's word (github_status/_conclusion/_runner, from the webhooks), not the report's:
# - GitHub completed it before a runner took it, or on this lease's runner: GitHub's conclusion;
# - it ran on this lease's runner, completion not heard yet: the runner's word (the reported state);
# - it runs (or ran) on another runner: this lease ends, the job stays 'running' until GitHub says completed;
# - its runner ran some job and GitHub has not yet said which: 'running' with no lease, 'ran_runner' set, until
#   a webhook says (RECORD_UPDATE: this job -> its result; another job -> this one is queued again);
# - its runner took another job (runner_took), or ran none: the demand is still open, so back to the end of its
#   queue WITHOUT counting the attempt. A 'released' report (the runner ran no job at all) counts in ``releases``: past
#   max_releases in a row the job fails (an image whose runner never starts must not loop).
# KEYS: job, stream, reply
# ARGV: agent_id, reported, now, reason, exit_code, retention, lease_runner, max_releases
REPORT_RUNNER = replayable(
    FINAL_OF
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'agent_id', 'github_status', 'github_conclusion',
  'github_runner', 'attempts', 'releases', 'runner_took')
if not f[1] then return {'missing', ''} end
if f[3] ~= ARGV[1] then return {'not_owner', f[1]} end
if f[1] ~= 'assigned' and f[1] ~= 'running' then return {'bad_transition', f[1]} end
if f[2] then
  redis.call('XACK', KEYS[2], 'smith-agents', f[2])
  redis.call('XDEL', KEYS[2], f[2])
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'exit_code', ARGV[5]) end
local gs, gc, gr = f[4] or '', f[5] or '', f[6] or ''
if gs == 'completed' and (gr == '' or gr == ARGV[7]) then
  finish(KEYS[1], final_of(gc), ARGV[3], 'GitHub: ' .. (gc ~= '' and gc or 'completed'), ARGV[6])
  return {'github', f[1]}
end
if gr == ARGV[7] and ARGV[2] ~= 'released' then
  finish(KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6])
  return {'runner', f[1]}
end
if gr ~= '' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'updated_at', ARGV[3], 'reason', 'GitHub ran it on runner ' .. gr)
  redis.call('HDEL', KEYS[1], 'entry', 'agent_id')
  if gs == 'completed' then finish(KEYS[1], final_of(gc), ARGV[3], 'GitHub: ' .. gc .. ' on runner ' .. gr, ARGV[6]) end
  return {'elsewhere', f[1]}
end
if ARGV[2] ~= 'released' and (f[9] or '') == '' then
  -- its runner ran a job, GitHub has not yet said which: wait for its word (RECORD_UPDATE ends the wait)
  redis.call('HSET', KEYS[1], 'state', 'running', 'ran_runner', ARGV[7], 'updated_at', ARGV[3],
    'reason', 'its runner ' .. ARGV[7] .. ' ran a job; waiting for GitHub to say which')
  redis.call('HDEL', KEYS[1], 'entry', 'agent_id')
  return {'waiting', f[1]}
end
redis.call('HDEL', KEYS[1], 'runner_took', 'ran_runner')
local releases = tonumber(f[8] or '0')
if ARGV[2] == 'released' then releases = releases + 1 end
local attempts = math.max(tonumber(f[7] or '0') - 1, 0)
redis.call('HDEL', KEYS[1], 'entry', 'agent_id', 'assigned_at', 'started_at')
redis.call('HSET', KEYS[1], 'releases', releases, 'attempts', attempts)
if releases > tonumber(ARGV[8]) then
  finish(KEYS[1], 'failed', ARGV[3], ARGV[4] .. '; ' .. releases .. ' runners in a row ran no job', ARGV[6])
  return {'failed', f[1]}
end
local job_id = redis.call('HGET', KEYS[1], 'id')
local entry = redis.call('XADD', KEYS[2], '*', 'job', job_id)
redis.call('HSET', KEYS[1], 'state', 'queued', 'entry', entry, 'updated_at', ARGV[3], 'reason', ARGV[4])
return {'requeued', f[1]}
"""
)

# GitHub's jobs API says a job Smith holds as 'running' with no lease (waiting for a webhook that never came) is
# still queued: put it back on its queue. The lease that ended was not the job's fault: its attempt is given back.
# KEYS: job, stream, reply   ARGV: now, reason
REOPEN = replayable("""
local f = redis.call('HMGET', KEYS[1], 'state', 'agent_id', 'attempts', 'github_status')
if f[1] ~= 'running' or f[2] or f[4] == 'completed' then return {'stale', f[1] or ''} end
local job_id = redis.call('HGET', KEYS[1], 'id')
local entry = redis.call('XADD', KEYS[2], '*', 'job', job_id)
redis.call('HSET', KEYS[1], 'state', 'queued', 'entry', entry, 'updated_at', ARGV[1], 'reason', ARGV[2],
  'github_status', 'queued', 'attempts', math.max(tonumber(f[3] or '0') - 1, 0))
redis.call('HDEL', KEYS[1], 'ran_runner', 'runner_took', 'github_runner', 'started_at')
return {'reopened', f[1]}
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
