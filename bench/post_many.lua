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

dofile("bench/report.lua")  -- the scripts run wrk from the repository root
