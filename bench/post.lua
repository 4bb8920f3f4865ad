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

dofile("bench/report.lua")  -- the scripts run wrk from the repository root
