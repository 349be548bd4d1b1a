-- Replays pre-signed requests written by `tally simulate --dump FILE`: one request a line,
-- "path<TAB>signature<TAB>content-type<TAB>body". Each wrk thread takes every n-th line, so
-- threads never send the same request; a thread that reaches the end of its share starts over
-- (those repeats reach tally as duplicates). Prints one JSON line at the end.
-- Usage: wrk -tN -s replay.lua URL -- FILE PATH_PREFIX N

local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local file, filter, threads = args[1], args[2], tonumber(args[3] or "1")
  local n = 0
  reqs = {}
  for line in io.lines(file) do
    local path, sig, ctype, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    if path and (filter == nil or path:find(filter, 1, true) == 1) then
      if n % threads == id then
        reqs[#reqs + 1] = wrk.format("POST", path,
          { ["Content-Type"] = ctype, ["X-Twilio-Signature"] = sig }, body)
      end
      n = n + 1
    end
  end
  i = 0
  wraps = 0
end

function request()
  i = i + 1
  if i > #reqs then
    i = 1
    wraps = wraps + 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local s = summary
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"requests_per_s":%.1f,' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    s.requests, s.duration, s.bytes, s.errors.connect, s.errors.read, s.errors.write,
    s.errors.status, s.errors.timeout, s.requests / (s.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
