-- Load for the auth service; MODE selects the scenario (env vars are read in every thread).
--   MODE=verify  TOKEN=<jwt>                         GET  /auth/verify (Bearer)
--   MODE=health                                      GET  /health/live
--   MODE=login   CLINIC=.. EMAIL=.. PASSWORD=..      POST /auth/login (correct password)
--   MODE=refresh SEED_FILE=tokens.txt SEEDS_PER_THREAD=N
--       POST /auth/refresh, chained: each 200's new refresh_token is queued for a later
--       request, so every token is presented exactly once (no reuse detection triggered).
-- done() prints one line: RESULT {json}
local mode = os.getenv("MODE") or "health"
local queue, qhead, qtail = {}, 1, 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local function push(tok) qtail = qtail + 1; queue[qtail] = tok end
local function pop()
  if qhead > qtail then return "exhausted" end
  local t = queue[qhead]; queue[qhead] = nil; qhead = qhead + 1; return t
end

function init(args)
  local thread_id = tonumber(tid) or 0
  if mode == "verify" then
    wrk.method = "GET"; wrk.path = "/auth/verify"
    wrk.headers["Authorization"] = "Bearer " .. assert(os.getenv("TOKEN"), "TOKEN not set")
  elseif mode == "health" then
    wrk.method = "GET"; wrk.path = os.getenv("HEALTH_PATH") or "/health/live"
  elseif mode == "login" then
    wrk.method = "POST"; wrk.path = "/auth/login"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = string.format('{"clinic":"%s","email":"%s","password":"%s"}',
      os.getenv("CLINIC") or "bench", os.getenv("EMAIL") or "bench@example.com",
      os.getenv("PASSWORD") or "correct horse battery staple")
  elseif mode == "refresh" then
    wrk.headers["Content-Type"] = "application/json"
    local per = tonumber(os.getenv("SEEDS_PER_THREAD") or "1000")
    local i = 0
    local seed_file = assert(os.getenv("SEED_FILE"), "SEED_FILE not set")
    for line in io.lines(seed_file) do
      if i >= thread_id * per and i < (thread_id + 1) * per and #line > 0 then push(line) end
      i = i + 1
    end
  end
end

if mode == "refresh" then
  request = function()
    return wrk.format("POST", "/auth/refresh", nil, '{"refresh_token":"' .. pop() .. '"}')
  end
  response = function(status, headers, body)
    if status == 200 then
      local t = body:match('"refresh_token":"([^"]+)"')
      if t then push(t) end
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'RESULT {"mode":"%s","requests":%d,"duration_s":%.2f,"rps":%.1f,"p50_ms":%.2f,"p90_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,"non2xx":%d,"sock_errors":%d,"timeouts":%d}\n',
    mode, summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.status, e.connect + e.read + e.write, e.timeout))
end
