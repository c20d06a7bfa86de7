"""Lua scripts of the built-in workflow runs (wfruns.py). Each is one state change of a run record, wrapped by
``replay.replayable`` (the last of KEYS is its reply key), so a resent call answers as the first did.

The run hash's fields: the run's own (``repo``, ``workflow``, ``event``, ``state``, ``conclusion``, ...), and per
workflow job ``j:<job>`` (waiting | started | done), ``n:<job>`` (how many instances: matrix combinations),
``s:<smith job id>`` (one instance's spec, JSON), ``i:<job>:<index>`` (an instance's result, JSON) and
``r:<job>`` (the job's result and outputs, JSON); ``k:<smith job id>`` is the instance's GitHub check run id
(written plainly by wfruns.py: not part of the run's state)."""

from __future__ import annotations

from smith.adapters.redis.replay import replayable

# KEYS: run, runs, reply. ARGV: run id, created_at, then field/value pairs. 1: created; 0: it existed.
CREATE = replayable("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
""")

# KEYS: run, reply. ARGV: job, instance count, then smith id/spec pairs. 1: this call started the job.
START = replayable("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'j:' .. ARGV[1])
if state and state ~= 'waiting' then return 0 end
redis.call('HSET', KEYS[1], 'j:' .. ARGV[1], 'started', 'n:' .. ARGV[1], ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], 's:' .. ARGV[i], ARGV[i + 1]) end
return 1
""")

# KEYS: run, reply. ARGV: job, index, result JSON. 1: recorded; 0: that instance had a result already.
INSTANCE = replayable("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'i:' .. ARGV[1] .. ':' .. ARGV[2], ARGV[3])
""")

# KEYS: run, reply. ARGV: job, result JSON. 1: the job is done now; 0: it was already.
JOB_DONE = replayable("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'j:' .. ARGV[1]) == 'done' then return 0 end
redis.call('HSET', KEYS[1], 'j:' .. ARGV[1], 'done', 'r:' .. ARGV[1], ARGV[2])
return 1
""")

# KEYS: run, runs, reply. ARGV: run id, conclusion, finished_at, retention seconds. 1: this call finished it.
RUN_DONE = replayable("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') == 'completed' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'completed', 'conclusion', ARGV[2], 'finished_at', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
""")

# KEYS: trigger, triggers, reply. ARGV: delivery id, received_at, then field/value pairs. 1: recorded; 0: known.
TRIGGER = replayable("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'state', 'pending')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
""")

# KEYS: trigger, triggers, reply. ARGV: delivery id, state (done | failed), runs JSON, error, keep seconds.
# The payload goes (each run keeps its own copy). 1: this call settled it; 0: it was settled (or is gone).
TRIGGER_DONE = replayable("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'runs', ARGV[3], 'error', ARGV[4])
redis.call('HDEL', KEYS[1], 'payload')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
""")

# A run's fields set, if the run exists. KEYS: run, reply. ARGV: field/value pairs; a value "" deletes the field.
MARK = replayable("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
""")

# A run asks its concurrency group to run (GitHub's rules: at most one running and one pending per group; a newer
# pending run replaces the pending one; cancel-in-progress replaces the running one too). Idempotent: asked again,
# a run gets the same answer. KEYS: group, reply. ARGV: run id, cancel-in-progress (1/0), keep seconds.
# Reply: {'run' | 'wait' | 'cancelled', the runs this call cancelled...}.
ENTER = replayable("""
local id = ARGV[1]
local running = redis.call('HGET', KEYS[1], 'running')
local pending = redis.call('HGET', KEYS[1], 'pending')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if redis.call('HEXISTS', KEYS[1], 'x:' .. id) == 1 then return {'cancelled'} end
if running == id then return {'run'} end
if pending == id and ARGV[2] ~= '1' then return {'wait'} end
if not running then
  redis.call('HSET', KEYS[1], 'running', id)
  if pending == id then redis.call('HDEL', KEYS[1], 'pending') end
  return {'run'}
end
local out = {'wait'}
if ARGV[2] == '1' then
  out = {'run', running}
  redis.call('HSET', KEYS[1], 'x:' .. running, '1', 'running', id)
end
if pending and pending ~= id then
  table.insert(out, pending)
  redis.call('HSET', KEYS[1], 'x:' .. pending, '1')
end
redis.call('HDEL', KEYS[1], 'pending')
if out[1] == 'wait' then redis.call('HSET', KEYS[1], 'pending', id) end
return out
""")

# A finished (or cancelled) run leaves its group. KEYS: group, reply. ARGV: run id.
# Reply: the pending run that runs now, or ''.
LEAVE = replayable("""
local running = redis.call('HGET', KEYS[1], 'running')
local pending = redis.call('HGET', KEYS[1], 'pending')
if pending == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'pending')
  return ''
end
if running ~= ARGV[1] then return '' end
if pending then
  redis.call('HSET', KEYS[1], 'running', pending)
  redis.call('HDEL', KEYS[1], 'pending')
  return pending
end
redis.call('HDEL', KEYS[1], 'running')
return ''
""")
