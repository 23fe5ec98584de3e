-- presence-svc's state in Redis: the rules of hub.rs, run inside Redis so
-- that each call is atomic (Redis runs a script alone, start to end).
-- ARGV[1] op, ARGV[2] now (ms, the caller's clock), ARGV[3] grace,
-- ARGV[4] interval, ARGV[5] lease; the op's own arguments follow.
-- Keys (one Redis, not a cluster): u:USER hash, s:USER set of the user's
-- sessions, e:EDGE set of the edge's sessions, leases zset (edge -> last
-- report), pending zset (users the clock has work for).
local P = 'confab:p:'
local op = ARGV[1]
local now, grace, interval, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}

-- Two strings as one set member: the first's length, ':', both.
local function pack(a, b) return #a .. ':' .. a .. b end
local function unpack2(m)
  local n = string.match(m, '^(%d+):')
  local from = #n + 2
  return string.sub(m, from, from + tonumber(n) - 1), string.sub(m, from + tonumber(n))
end

local function get(user)
  local h = redis.call('HMGET', P .. 'u:' .. user, 'chosen', 'closing_at', 'last_visible', 'shown', 'shown_since',
    'published', 'published_at')
  return {
    exists = h[4] ~= false,
    chosen = h[1] or nil,
    closing_at = tonumber(h[2] or nil),
    last_visible = tonumber(h[3] or nil),
    shown = h[4] or 'offline',
    shown_since = tonumber(h[5] or nil) or 0,
    published = h[6] or nil,
    published_at = tonumber(h[7] or nil),
    sessions = redis.call('SCARD', P .. 's:' .. user),
  }
end

local function save(user, u)
  local key, set, del = P .. 'u:' .. user, {}, {}
  local function put(f, v)
    if v == nil then del[#del + 1] = f else set[#set + 1] = f; set[#set + 1] = tostring(v) end
  end
  put('chosen', u.chosen); put('closing_at', u.closing_at); put('last_visible', u.last_visible)
  put('shown', u.shown); put('shown_since', u.shown_since); put('published', u.published)
  put('published_at', u.published_at)
  redis.call('HSET', key, unpack(set))
  if #del > 0 then redis.call('HDEL', key, unpack(del)) end
  u.exists = true
end

local function chosen(u) return u.chosen or 'online' end

local function visible(u)
  if u.sessions == 0 and u.closing_at == nil then return 'offline' end
  if chosen(u) == 'invisible' then return 'offline' end
  return chosen(u)
end

local function pending(u)
  return u.closing_at ~= nil or u.published ~= visible(u) or (u.sessions == 0 and u.shown ~= 'offline')
end

local function mark(user, u)
  if pending(u) then redis.call('ZADD', P .. 'pending', 0, user) else redis.call('ZREM', P .. 'pending', user) end
end

-- {user, status, last seen (-1: never), since} as `viewer` sees it.
local function seen(user, u, viewer)
  if not u.exists then return { user, 'offline', -1, now } end
  local own = user == viewer and (u.sessions > 0 or u.closing_at ~= nil)
  local status = u.shown
  if own then status = chosen(u) end
  local last = u.last_visible or -1
  if u.shown ~= 'offline' then last = now end
  return { user, status, last, u.shown_since }
end

-- Re-evaluates a user after a change; publishes what is due.
local function changed(user)
  local u = get(user)
  local vis = visible(u)
  if vis ~= u.shown then
    local began = now
    if vis == 'offline' then began = u.closing_at or now end
    if u.shown ~= 'offline' or vis == 'offline' then u.last_visible = began end
    u.shown, u.shown_since = vis, began
  end
  if u.shown ~= 'offline' then u.last_visible = now end
  local due = u.published ~= u.shown and (u.published_at == nil or now - u.published_at >= interval)
  if due then u.published, u.published_at = u.shown, now end
  save(user, u)
  if due then
    local s = seen(user, u, '')
    out[#out + 1] = s
    redis.call('PUBLISH', P .. 'updates', cjson.encode({ user = s[1], status = s[2], last = s[3], since = s[4] }))
  end
  mark(user, u)
end

if op == 'sessions' then
  -- (open 1|0, user, edge, session) for each change, in order.
  for i = 6, #ARGV, 4 do
    local open, user, edge, session = ARGV[i] == '1', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    redis.call('ZADD', P .. 'leases', now, edge)
    local mine, edges = pack(edge, session), pack(user, session)
    if open then
      redis.call('SADD', P .. 's:' .. user, mine)
      redis.call('SADD', P .. 'e:' .. edge, edges)
      redis.call('HDEL', P .. 'u:' .. user, 'closing_at')
    else
      redis.call('SREM', P .. 'e:' .. edge, edges)
      if redis.call('SREM', P .. 's:' .. user, mine) == 1 and redis.call('SCARD', P .. 's:' .. user) == 0 then
        redis.call('HSET', P .. 'u:' .. user, 'closing_at', now)
      end
    end
    changed(user)
  end
  return out
elseif op == 'heartbeat' then
  redis.call('ZADD', P .. 'leases', now, ARGV[6])
  return out
elseif op == 'status' then
  local user = ARGV[6]
  redis.call('HSET', P .. 'u:' .. user, 'chosen', ARGV[7])
  changed(user)
  return { out, seen(user, get(user), user) }
elseif op == 'get' then
  local viewer = ARGV[6]
  for i = 7, #ARGV do out[#out + 1] = seen(ARGV[i], get(ARGV[i]), viewer) end
  return out
elseif op == 'tick' then
  for _, edge in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now - lease)) do
    redis.call('ZREM', P .. 'leases', edge)
    for _, m in ipairs(redis.call('SMEMBERS', P .. 'e:' .. edge)) do
      local user, session = unpack2(m)
      local key = P .. 's:' .. user
      if redis.call('SREM', key, pack(edge, session)) == 1 and redis.call('SCARD', key) == 0 then
        -- A dead edge's users are offline at once (the lease was the grace).
        redis.call('HDEL', P .. 'u:' .. user, 'closing_at')
        redis.call('HSET', P .. 'u:' .. user, 'last_visible', now)
        redis.call('ZADD', P .. 'pending', 0, user)
      end
    end
    redis.call('DEL', P .. 'e:' .. edge)
  end
  for _, user in ipairs(redis.call('ZRANGE', P .. 'pending', 0, -1)) do
    local u = get(user)
    local expired = u.closing_at ~= nil and now - u.closing_at >= grace
    if expired or u.published ~= visible(u) or (u.sessions == 0 and u.closing_at == nil and u.shown ~= 'offline') then
      if expired then
        local closed = u.closing_at
        u.closing_at, u.last_visible = nil, closed
        if u.shown ~= 'offline' then u.shown, u.shown_since = 'offline', closed end
        save(user, u)
      end
      changed(user)
    else
      mark(user, u)
    end
  end
  return out
end
return redis.error_reply('unknown presence op ' .. tostring(op))
