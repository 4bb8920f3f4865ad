-- wrk script: POST one body with a fixed X-SigSci-Signature.
-- Usage: wrk -s bench/post.lua URL -- BODY_FILE SIGNATURE
function init(args)
    local f = assert(io.open(args[1], "rb"))
    wrk.body = f:read("*a")
    f:close()
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["X-SigSci-Signature"] = args[2]
end

function done(summary, latency, requests)
    io.write(string.format("RESULT requests=%d non2xx=%d errors=%d rps=%.0f p50_ms=%.3f p99_ms=%.3f\n",
        summary.requests, summary.errors.status,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
