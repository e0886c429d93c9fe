"""Job records in Redis, for deployments whose broker is Redis: machines that share nothing
but Redis and the bucket see the same jobs.

The same interface and semantics as the SQLite :class:`~poets.engine.store.jobs.JobStore`
(:class:`~poets.engine.store.jobs.JobRecords`). Every change that reads before it writes is
one Lua script, so it is atomic as the SQLite statement it mirrors. Keys, all under one prefix
(``poets:`` by default):

- ``job:<id>``: a hash per job, one field per :class:`~poets.engine.store.jobs.Job` field
  (strings; None is an absent field; ``progress``, ``params``, ``result`` as JSON);
- ``jobs:created``: every job id, scored by its creation time (the list, newest first);
- ``jobs:unfinished``: the ids of queued and running jobs (``active``, ``running``, ``lost``);
- ``jobs:finished``: the ids of finished jobs, scored by their finish time (the history bound);
- ``jobs:stats``: count and summed run time per state, kept by every change (the metrics);
- ``jobs:last-created``: the newest creation time per (model, trigger) (the scheduler);
- ``jobs:deleted``: how many records the bounded history deleted;
- ``claim:<key>``: a scheduler's lease, a string with a TTL.

Records are never expired by Redis: they are deleted only by the bounded history, so Redis
must persist them (AOF, see the README). Times are the caller's clock, as with SQLite.

Whatever keeps a call from reaching Redis raises
:class:`~poets.engine.errors.StoreUnavailable` naming the URL (without its password).
"""

import contextlib
import json
import time
from dataclasses import fields
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from poets.engine.errors import Conflict, NotFound, StoreUnavailable
from poets.engine.store.jobs import FINISHED, WORKER_GONE, Job, JobRecords, history_deleted

PREFIX = "poets:"
# Longest waits for Redis: connecting, and one command's answer. A caller (an API request, a
# heartbeat) gets StoreUnavailable after them rather than hanging.
CONNECT_TIMEOUT_S = 3.0
ANSWER_TIMEOUT_S = 10.0
# Most records one trim deletes in one script (Redis runs scripts alone: keep each short).
TRIM_BATCH = 500

_FIELDS = tuple(spec.name for spec in fields(Job))
_FLOATS = ("heartbeat", "created", "started", "finished")
_INTS = ("version", "attempts")
_JSON = ("progress", "params", "result")

# Shared by every script: ARGV[1] is the key prefix. The indexes and the stats follow each
# change of a job through write() and remove(); nothing else touches them.
_LIB = """
local P = ARGV[1]
local FINISHED = {succeeded = true, failed = true, cancelled = true}
local UNFINISHED = {queued = true, running = true}

local function jkey(id) return P .. 'job:' .. id end

local function snapshot(id)
  local v = redis.call('HMGET', jkey(id), 'state', 'started', 'finished', 'created')
  if not v[1] then return nil end
  return {state = v[1], started = v[2], finished = v[3], created = v[4] or '0'}
end

local function seconds(h)
  if h.started and h.finished then return tonumber(h.finished) - tonumber(h.started) end
  return 0
end

local function account(h, sign)
  redis.call('HINCRBY', P .. 'jobs:stats', 'count:' .. h.state, sign)
  local s = seconds(h)
  if s ~= 0 then
    redis.call('HINCRBYFLOAT', P .. 'jobs:stats', 'seconds:' .. h.state, string.format('%.17g', sign * s))
  end
end

local function unindex(id, h)
  if not h then return end
  account(h, -1)
  redis.call('ZREM', P .. 'jobs:created', id)
  redis.call('SREM', P .. 'jobs:unfinished', id)
  redis.call('ZREM', P .. 'jobs:finished', id)
end

local function index(id, h)
  if not h then return end
  account(h, 1)
  redis.call('ZADD', P .. 'jobs:created', h.created, id)
  if UNFINISHED[h.state] then
    redis.call('SADD', P .. 'jobs:unfinished', id)
  elseif FINISHED[h.state] then
    redis.call('ZADD', P .. 'jobs:finished', h.finished or h.created, id)
  end
end

-- sets: field -> string; dels: list of fields.
local function write(id, sets, dels)
  local before = snapshot(id)
  unindex(id, before)
  local flat = {}
  for k, v in pairs(sets) do
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  if #flat > 0 then redis.call('HSET', jkey(id), unpack(flat)) end
  if #dels > 0 then redis.call('HDEL', jkey(id), unpack(dels)) end
  index(id, snapshot(id))
end

local function remove(id)
  unindex(id, snapshot(id))
  redis.call('DEL', jkey(id))
end

-- COALESCE(heartbeat, started, created): when the job last showed signs of life.
local function seen(id)
  local v = redis.call('HMGET', jkey(id), 'heartbeat', 'started', 'created')
  return tonumber(v[1] or v[2] or v[3] or '0')
end
"""

# ARGV: prefix, id, fields (JSON object of strings), last-created field, created.
_CREATE = """
local id = ARGV[2]
if redis.call('EXISTS', jkey(id)) == 1 then return 0 end
write(id, cjson.decode(ARGV[3]), {})
local old = redis.call('HGET', P .. 'jobs:last-created', ARGV[4])
if (not old) or tonumber(old) < tonumber(ARGV[5]) then
  redis.call('HSET', P .. 'jobs:last-created', ARGV[4], ARGV[5])
end
return 1
"""

# ARGV: prefix, id, fields to set (JSON object of strings), fields to clear (JSON list).
_UPDATE = """
local id = ARGV[2]
if redis.call('EXISTS', jkey(id)) == 0 then return 0 end
write(id, cjson.decode(ARGV[3]), cjson.decode(ARGV[4]))
return 1
"""

# ARGV: prefix, id, has worker ('1'/'0'), worker, now.
_START = """
local id = ARGV[2]
local state = redis.call('HGET', jkey(id), 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
local attempts = tonumber(redis.call('HGET', jkey(id), 'attempts') or '0') + 1
local sets = {state = 'running', attempts = string.format('%d', attempts), heartbeat = ARGV[5]}
if not redis.call('HGET', jkey(id), 'started') then sets.started = ARGV[5] end
local dels = {}
if ARGV[3] == '1' then sets.worker = ARGV[4] else dels = {'worker'} end
write(id, sets, dels)
return 1
"""

# ARGV: prefix, id, has worker ('1'/'0'), worker, now.
_BEAT = """
local v = redis.call('HMGET', jkey(ARGV[2]), 'state', 'worker')
if v[1] ~= 'running' then return 0 end
if ARGV[3] == '1' then
  if v[2] ~= ARGV[4] then return 0 end
elseif v[2] then
  return 0
end
redis.call('HSET', jkey(ARGV[2]), 'heartbeat', ARGV[5])
return 1
"""

# ARGV: prefix, name. Any queued or running job of that model?
_ACTIVE = """
for _, id in ipairs(redis.call('SMEMBERS', P .. 'jobs:unfinished')) do
  local v = redis.call('HMGET', jkey(id), 'name', 'state')
  if v[1] == ARGV[2] and UNFINISHED[v[2]] then return 1 end
end
return 0
"""

# ARGV: prefix, cutoff ('' for every running job). The running jobs (last seen before the
# cutoff), each as HGETALL's flat list: one consistent snapshot.
_RUNNING = """
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'jobs:unfinished')) do
  if redis.call('HGET', jkey(id), 'state') == 'running' then
    if ARGV[2] == '' or seen(id) < tonumber(ARGV[2]) then
      found[#found + 1] = redis.call('HGETALL', jkey(id))
    end
  end
end
return found
"""

# ARGV: prefix, id, cutoff ('' for none).
_REQUEUE = """
local id = ARGV[2]
if redis.call('HGET', jkey(id), 'state') ~= 'running' then return 0 end
if ARGV[3] ~= '' and not (seen(id) < tonumber(ARGV[3])) then return 0 end
write(id, {state = 'queued'}, {'worker'})
return 1
"""

# ARGV: prefix, id, now, cutoff ('' for none), error of a job whose worker is gone.
# Returns 1 when the job is now cancelled.
_CANCEL = """
local id = ARGV[2]
local state = redis.call('HGET', jkey(id), 'state')
if not state then return 0 end
local sets = {cancel_requested = '1'}
local cancelled = 0
if state == 'queued' then
  sets.state = 'cancelled'
  sets.finished = ARGV[3]
  cancelled = 1
elseif state == 'running' and ARGV[4] ~= '' and seen(id) < tonumber(ARGV[4]) then
  sets.state = 'cancelled'
  sets.finished = ARGV[3]
  sets.error = ARGV[5]
  cancelled = 1
end
write(id, sets, {})
return cancelled
"""

# ARGV: prefix, history, batch. Deletes the earliest finished past history; returns how many.
_TRIM = """
local excess = redis.call('ZCARD', P .. 'jobs:finished') - tonumber(ARGV[2])
if excess <= 0 then return 0 end
if excess > tonumber(ARGV[3]) then excess = tonumber(ARGV[3]) end
local ids = redis.call('ZRANGE', P .. 'jobs:finished', 0, excess - 1)
for _, id in ipairs(ids) do remove(id) end
redis.call('INCRBY', P .. 'jobs:deleted', #ids)
return #ids
"""

# ARGV: prefix, key, holder, ttl in ms. Redis expires the lease; one taken with a ttl of 0 or
# less is over at once (as in SQLite, where an "until" in the past frees the claim).
_CLAIM = """
local key = P .. 'claim:' .. ARGV[2]
local holder = redis.call('GET', key)
if holder and holder ~= ARGV[3] then return 0 end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
else
  redis.call('DEL', key)
end
return 1
"""

# ARGV: prefix, key, holder.
_RELEASE = """
local key = P .. 'claim:' .. ARGV[2]
if redis.call('GET', key) == ARGV[3] then redis.call('DEL', key) end
return 0
"""


def describe_url(url: str) -> str:
    """``url`` without its password (and user name): fit for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def _encode(field: str, value: Any) -> str:
    if field in _JSON:
        return json.dumps(value)
    if field in _FLOATS:
        return repr(float(value))
    if field in _INTS:
        return str(int(value))
    if field == "cancel_requested":
        return "1" if value else "0"
    return str(value)


def _decode(data: Dict[str, str]) -> Job:
    values: Dict[str, Any] = {}
    for name, text in data.items():
        if name not in _FIELDS:
            continue  # a field of a later version: ignored, as SQLite ignores unknown columns
        if name in _JSON:
            values[name] = json.loads(text) if text else None
        elif name in _FLOATS:
            values[name] = float(text)
        elif name in _INTS:
            values[name] = int(text)
        elif name == "cancel_requested":
            values[name] = text == "1"
        else:
            values[name] = text
    for name in ("progress", "params"):
        if not values.get(name):
            values[name] = {}
    return Job(**values)


def _pairs(flat: List[str]) -> Dict[str, str]:
    return dict(zip(flat[::2], flat[1::2]))


def _split(changes: Dict[str, Any]) -> Tuple[Dict[str, str], List[str]]:
    """The fields to set (encoded) and those to clear (None) of ``changes``."""
    unknown = sorted(set(changes) - set(_FIELDS) - {"id"})
    if unknown or "id" in changes:
        raise ValueError("not job fields that can change: {}".format(", ".join(unknown or ["id"])))
    sets = {name: _encode(name, value) for name, value in changes.items() if value is not None}
    clears = [name for name, value in changes.items() if value is None]
    return sets, clears


class RedisJobStore(JobRecords):
    """Job records in Redis. Safe across threads, processes and machines.

    Args:
        url: the redis:// URL (POETS_BROKER_URL).
        history: most finished records kept (None: all).
        prefix: the keys' prefix; tests give each store its own.
    """

    def __init__(self, url: str, history: Optional[int] = None, prefix: str = PREFIX) -> None:
        self.url = url
        self.history = history
        self.prefix = prefix
        # Any: redis-py 4.3 (the TX2's) ships no types, later ones type replies by decode mode.
        self._client: Any = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=ANSWER_TIMEOUT_S,
            decode_responses=True,
            # Stale pooled connections are checked before use; a failed call is never
            # retried blindly: a script whose answer was lost may have run (attempts + 1).
            health_check_interval=30,
            retry=Retry(NoBackoff(), 0),
        )
        client = self._client
        self._create = client.register_script(_LIB + _CREATE)
        self._update = client.register_script(_LIB + _UPDATE)
        self._start = client.register_script(_LIB + _START)
        self._beat = client.register_script(_LIB + _BEAT)
        self._active = client.register_script(_LIB + _ACTIVE)
        self._running = client.register_script(_LIB + _RUNNING)
        self._requeue = client.register_script(_LIB + _REQUEUE)
        self._cancel = client.register_script(_LIB + _CANCEL)
        self._trim_script = client.register_script(_LIB + _TRIM)
        self._claim = client.register_script(_LIB + _CLAIM)
        self._release = client.register_script(_LIB + _RELEASE)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    # -- reaching Redis ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        """Turns what keeps a call from reaching Redis into StoreUnavailable."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise self._unavailable(what, exc) from exc
        except redis.exceptions.ResponseError as exc:
            # A Redis that refuses writes: persistence failing (MISCONF), out of memory (OOM),
            # a read-only replica (READONLY), still loading its data (LOADING).
            if str(exc).split(" ", 1)[0] in ("MISCONF", "OOM", "READONLY", "LOADING"):
                raise self._unavailable(what, exc) from exc
            raise

    def _unavailable(self, what: str, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(
            "The job records in Redis ({}) cannot be {} ({}: {}). Check that Redis is running, "
            "reachable from this machine, has memory and disk to write to, and that "
            "POETS_BROKER_URL is right; then retry.".format(
                describe_url(self.url), what, type(exc).__name__, str(exc).strip() or "no detail"
            )
        )

    def _call(self, script: Any, what: str, *args: Any) -> Any:
        with self._reaching(what):
            return script(args=[self.prefix, *args])

    def _key(self, name: str) -> str:
        return self.prefix + name

    # -- JobRecords ---------------------------------------------------------------------------
    def create(
        self, name: str, params: Dict[str, Any], job_id: Optional[str] = None, trigger: str = "api"
    ) -> Job:
        job = Job.queued(name, params, job_id, trigger)
        if not self._put(job, "written"):
            raise Conflict("Job {} exists already.".format(job.id))
        return job

    def put_record(self, job: Job) -> bool:
        if not self._put(job, "written"):
            return False
        if job.state in FINISHED:
            self._trim()
        return True

    def _put(self, job: Job, what: str) -> bool:
        values = {name: value for name, value in job.to_dict().items() if value is not None}
        values["progress"] = values.get("progress") or {}
        values["params"] = values.get("params") or {}
        encoded = {name: _encode(name, value) for name, value in values.items()}
        last = json.dumps([job.name, job.trigger])
        created = _encode("created", job.created)
        return bool(self._call(self._create, what, job.id, json.dumps(encoded), last, created))

    def all_ids(self) -> List[str]:
        with self._reaching("read"):
            return [str(id) for id in self._client.zrange(self._key("jobs:created"), 0, -1)]

    def active(self, name: str) -> bool:
        return bool(self._call(self._active, "read", name))

    def last_created(self, name: str, trigger: str) -> Optional[float]:
        with self._reaching("read"):
            value = self._client.hget(self._key("jobs:last-created"), json.dumps([name, trigger]))
        return float(value) if value is not None else None

    def claim(self, key: str, holder: str, ttl_s: float) -> bool:
        ttl_ms = round(ttl_s * 1000)
        return bool(self._call(self._claim, "written", key, holder, str(ttl_ms)))

    def release(self, key: str, holder: str) -> None:
        self._call(self._release, "written", key, holder)

    def get(self, job_id: str) -> Job:
        with self._reaching("read"):
            data = self._client.hgetall(self._key("job:" + job_id))
        if not data:
            raise NotFound("No job {!r}: check the id against the job list.".format(job_id))
        return _decode(data)

    def list(self, limit: int = 100) -> List[Job]:
        if limit <= 0:
            return []
        with self._reaching("read"):
            ids = self._client.zrevrange(self._key("jobs:created"), 0, limit - 1)
            pipe = self._client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._key("job:" + job_id))
            found = pipe.execute() if ids else []
        return [_decode(data) for data in found if data]  # one deleted meanwhile: gone

    def update(self, job_id: str, **changes: Any) -> None:
        """Set fields; dict values are stored as JSON, None clears a field."""
        if not changes:
            return
        sets, clears = _split(changes)
        self._call(self._update, "written", job_id, json.dumps(sets), json.dumps(clears))
        if changes.get("state") in FINISHED:
            self._trim()

    def start(self, job_id: str, worker: Optional[str] = None) -> Job:
        now = repr(time.time())
        self._call(self._start, "written", job_id, "0" if worker is None else "1", worker or "", now)
        return self.get(job_id)

    def beat(self, job_id: str, worker: Optional[str]) -> bool:
        now = repr(time.time())
        return bool(
            self._call(self._beat, "written", job_id, "0" if worker is None else "1", worker or "", now)
        )

    def running(self) -> List[Job]:
        return self._jobs(self._call(self._running, "read", ""))

    def lost(self, after_s: float) -> List[Job]:
        return self._jobs(self._call(self._running, "read", repr(time.time() - after_s)))

    @staticmethod
    def _jobs(found: List[List[str]]) -> List[Job]:
        jobs = [_decode(_pairs(flat)) for flat in found]
        return sorted(jobs, key=lambda job: (job.created, job.id))  # as SQLite's rowid order

    def requeue(self, job_id: str, lost_after_s: Optional[float] = None) -> bool:
        cutoff = "" if lost_after_s is None else repr(time.time() - lost_after_s)
        return bool(self._call(self._requeue, "written", job_id, cutoff))

    def finish(self, job_id: str, state: str, **changes: Any) -> None:
        self.update(job_id, state=state, finished=time.time(), **changes)

    def request_cancel(self, job_id: str, lost_after_s: Optional[float] = None) -> Job:
        job = self.get(job_id)
        if job.state in FINISHED:
            raise Conflict("Job {} has already {}; nothing to cancel.".format(job_id, job.state))
        now = time.time()
        cutoff = "" if lost_after_s is None else repr(now - lost_after_s)
        cancelled = self._call(self._cancel, "written", job_id, repr(now), cutoff, WORKER_GONE)
        job = self.get(job_id)
        if cancelled:
            self._trim()
        return job

    def stats(self) -> Dict[str, Tuple[int, float]]:
        with self._reaching("read"):
            data = self._client.hgetall(self._key("jobs:stats"))
        found: Dict[str, Tuple[int, float]] = {}
        for name, value in data.items():
            kind, _, state = name.partition(":")
            if kind == "count" and int(value) > 0:
                found[state] = (int(value), float(data.get("seconds:" + state) or 0.0))
        return found

    def cancel_requested(self, job_id: str) -> bool:
        with self._reaching("read"):
            value = self._client.hget(self._key("job:" + job_id), "cancel_requested")
        return bool(value == "1")

    def deleted_records(self) -> int:
        with self._reaching("read"):
            value = self._client.get(self._key("jobs:deleted"))
        return int(value or 0)

    def _trim(self) -> int:
        """Delete the earliest finished records past ``history``; how many went."""
        if self.history is None:
            return 0
        deleted = 0
        while True:
            count = int(self._call(self._trim_script, "written", str(self.history), str(TRIM_BATCH)))
            deleted += count
            if count < TRIM_BATCH:
                break
        if deleted:
            history_deleted(deleted, self.history)
        return deleted
