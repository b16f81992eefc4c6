-- Load for an auth service (ours or the Node peer: the same script drives both, so the client
-- does the same work on each side). MODE selects the scenario (env vars are read in every thread).
--   MODE=verify  TOKEN=<jwt>                         GET  /auth/verify, one token (cache hits)
--   MODE=verify  TOKEN_FILE=tokens.txt               GET  /auth/verify, a rotating pool: thread i
--       sends lines [i*n/T, (i+1)*n/T) in order, so a token repeats only after the whole slice
--       (`wraps` counts how often a thread went round; 0 means no token was sent twice)
--       TOKEN_START=k (optional): each thread begins at line k of its slice, so successive runs
--       can continue the walk where the previous one stopped instead of resending its tokens
--   MODE=health  HEALTH_PATH=/health/ready           GET  HEALTH_PATH
--   MODE=login   CLINIC=.. EMAIL=.. PASSWORD=..      POST /auth/login (correct password)
--   MODE=refresh SEED_FILE=tokens.txt SEEDS_PER_THREAD=N
--       POST /auth/refresh, chained: each 200's new refresh_token is queued for a later
--       request, so every token is presented exactly once (no reuse detection triggered).
-- Every response is classified here: `ok` counts 2xx only (wrk's own error count misses 1xx/3xx).
-- done() prints one line: RESULT {json}
local mode = os.getenv("MODE") or "health"
local queue, qhead, qtail = {}, 1, 0
local threads = {}
local pool, pool_n, pool_i = {}, 0, 0
ok, responses, wraps = 0, 0, 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local function push(tok) qtail = qtail + 1; queue[qtail] = tok end
local function pop()
  if qhead > qtail then return "exhausted" end
  local t = queue[qhead]; queue[qhead] = nil; qhead = qhead + 1; return t
end

local function slice(path, thread_id, per)
  local lines, i = {}, 0
  for line in io.lines(path) do
    if #line > 0 then
      if i >= thread_id * per and i < (thread_id + 1) * per then lines[#lines + 1] = line end
      i = i + 1
    end
  end
  return lines
end

function init(args)
  local thread_id = tonumber(tid) or 0
  if mode == "verify" then
    wrk.method = "GET"; wrk.path = "/auth/verify"
    local file = os.getenv("TOKEN_FILE")
    if file then
      pool = slice(file, thread_id, assert(tonumber(os.getenv("TOKENS_PER_THREAD"))))
      pool_n = #pool
      assert(pool_n > 0, "empty token slice")
      pool_i = (tonumber(os.getenv("TOKEN_START") or "0") or 0) % pool_n
    else
      wrk.headers["Authorization"] = "Bearer " .. assert(os.getenv("TOKEN"), "TOKEN not set")
    end
  elseif mode == "health" then
    wrk.method = "GET"; wrk.path = os.getenv("HEALTH_PATH") or "/health/ready"
  elseif mode == "login" then
    wrk.method = "POST"; wrk.path = "/auth/login"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = string.format('{"clinic":"%s","email":"%s","password":"%s"}',
      os.getenv("CLINIC") or "bench", os.getenv("EMAIL") or "bench@example.com",
      os.getenv("PASSWORD") or "correct horse battery staple")
  elseif mode == "refresh" then
    wrk.headers["Content-Type"] = "application/json"
    for _, line in ipairs(slice(assert(os.getenv("SEED_FILE"), "SEED_FILE not set"), thread_id,
        tonumber(os.getenv("SEEDS_PER_THREAD") or "1000"))) do
      push(line)
    end
  end
end

if mode == "refresh" then
  request = function()
    return wrk.format("POST", "/auth/refresh", nil, '{"refresh_token":"' .. pop() .. '"}')
  end
elseif mode == "verify" and os.getenv("TOKEN_FILE") then
  request = function()
    pool_i = pool_i + 1
    if pool_i > pool_n then pool_i = 1; wraps = wraps + 1 end
    return wrk.format("GET", "/auth/verify", {["Authorization"] = "Bearer " .. pool[pool_i]})
  end
end

response = function(status, headers, body)
  responses = responses + 1
  if status >= 200 and status < 300 then
    ok = ok + 1
    if mode == "refresh" then
      local t = body:match('"refresh_token":"([^"]+)"')
      if t then push(t) end
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  local n_ok, n_resp, n_wraps = 0, 0, 0
  for _, t in ipairs(threads) do
    n_ok = n_ok + t:get("ok"); n_resp = n_resp + t:get("responses"); n_wraps = n_wraps + t:get("wraps")
  end
  io.write(string.format(
    'RESULT {"mode":"%s","requests":%d,"responses":%d,"ok":%d,"duration_s":%.3f,"ok_rps":%.1f,'
      .. '"p50_ms":%.2f,"p90_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,"non2xx":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,"wraps":%d}\n',
    mode, summary.requests, n_resp, n_ok, secs, n_ok / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, n_resp - n_ok, e.connect, e.read, e.write, e.timeout, n_wraps))
end
