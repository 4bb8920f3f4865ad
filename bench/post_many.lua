-- wrk script: POSTs pre-signed bodies in turn. Usage: wrk -s bench/post_many.lua URL -- BODIES_FILE
local bodies = {}
local next_index = 1

function init(args)
    for line in io.lines(args[1]) do
        local sig, body = line:match("^(%x+) (.*)$")
        bodies[#bodies + 1] = {sig = sig, body = body}
    end
    next_index = math.random(#bodies)
end

function request()
    local b = bodies[next_index]
    next_index = next_index % #bodies + 1
    return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["X-SigSci-Signature"] = b.sig}, b.body)
end

function done(summary, latency, requests)
    io.write(string.format("RESULT requests=%d non2xx=%d errors=%d rps=%.0f p50_ms=%.3f p99_ms=%.3f\n",
        summary.requests, summary.errors.status,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
